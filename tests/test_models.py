import pytest
import torch
from skimage import data as skdata
from PIL import Image

from archsae.errors import ArchsaeError
from archsae.models import load_backbone
from archsae.models._compat import import_timm


@pytest.fixture(scope="module")
def lite0():
    return load_backbone("efficientnet_lite0")


def _top5(backbone, array):
    x = backbone.transform(Image.fromarray(array).convert("RGB"))[None]
    with torch.no_grad():
        logits = backbone.model(x)
    info = import_timm().data.ImageNetInfo()
    return [info.index_to_description(int(i)) for i in logits.topk(5).indices[0]]


def test_embedded_lite0_recognises_scikit_image_photos(lite0):
    cats = {"tabby, tabby cat", "tiger cat", "Egyptian cat"}
    assert cats <= set(_top5(lite0, skdata.chelsea()))
    assert "espresso" in _top5(lite0, skdata.coffee())


def test_lite0_tokens_are_the_7x7_feature_map(lite0):
    acts, pos, grid = lite0.tokens(torch.zeros(2, 3, 224, 224))
    assert acts.shape == (2, 49, 1280) and grid == (7, 7)
    assert pos.tolist() == list(range(49))
    assert lite0.head_directions().shape == (1000, 1280)


def test_any_timm_vit_by_name_patch_and_prefix_tokens():
    vit = load_backbone("vit_tiny_patch16_224", pretrained=False)
    acts, pos, grid = vit.tokens(torch.zeros(1, 3, 224, 224))
    assert acts.shape == (1, 196, 192) and grid == (14, 14) and pos.min() == 0
    vit_cls = load_backbone("vit_tiny_patch16_224", pretrained=False, prefix_tokens=True)
    acts, pos, _ = vit_cls.tokens(torch.zeros(1, 3, 224, 224))
    assert acts.shape == (1, 197, 192) and pos[0] == -1 and pos[1] == 0
    block, _, _ = load_backbone("vit_tiny_patch16_224", pretrained=False, layer="blocks.3").tokens(torch.zeros(1, 3, 224, 224))
    assert block.shape == (1, 196, 192)


def test_unknown_model_and_layer_are_user_errors():
    with pytest.raises(ArchsaeError, match="unknown timm model"):
        load_backbone("no_such_model_xyz", pretrained=False)
    with pytest.raises(ArchsaeError, match="no layer"):
        load_backbone("efficientnet_lite0", pretrained=False, layer="blocks.99")
