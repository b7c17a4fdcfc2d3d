"""Import timm on a CPU-only torch beside a CUDA build of torchvision (DESIGN.md, offline assets).

torchvision 0.28.0 is the only build matching torch 2.13.0 here and it is a CUDA build: its
`_meta_registrations` module fails with "operator torchvision::nms does not exist". An empty module in
its place lets transforms, models and timm import; torchvision's C++ ops and `torchvision.io` stay
unavailable (we read images with Pillow). Applied only when the plain import fails.
"""

import sys
import types


def import_timm():
    try:
        import torchvision  # noqa: F401
    except RuntimeError as e:
        if "torchvision::" not in str(e):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
        import torchvision  # noqa: F401
    import timm

    return timm
