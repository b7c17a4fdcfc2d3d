#!/usr/bin/env bash
# The benchmarks' own virtual environment (benchmarks/.venv): archsae beside overcomplete 0.3.0, the
# authors' library, so both train on the same data in the same process. overcomplete imports on CPU torch
# only with matplotlib < 3.9 (and the torchvision stub archsae installs, see archsae.models._compat).
set -euo pipefail
cd "$(dirname "$0")"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check torch==2.13.0 torchvision==0.28.0 timm \
  overcomplete==0.3.0 "matplotlib<3.9" psutil -e ..
