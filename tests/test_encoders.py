import json
import os
import time
from urllib.parse import urlparse

import numpy as np
import pytest
import skimage.data
import torch
import torchvision
from PIL import Image

from pipeline.encoders import EncoderConfig, Preprocess, build_classifier, build_encoder, list_encoders
from pipeline.encoders import weights as encoder_weights
from pipeline.errors import EncoderWeightsError

CAT_CLASSES = set(range(281, 286))  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = {967, 968}  # espresso, cup


def top5(classifier, preprocess, photo: np.ndarray) -> set[int]:
    with torch.inference_mode():
        logits = classifier(preprocess(Image.fromarray(photo)).unsqueeze(0))
    return set(logits.topk(5).indices[0].tolist())


def test_lite0_pretrained_weights_classify_real_photos():
    classifier = build_classifier(EncoderConfig("efficientnet_lite0", "pretrained"))
    encoder = classifier[0]
    assert top5(classifier, encoder.preprocess, skimage.data.chelsea()) & CAT_CLASSES
    assert top5(classifier, encoder.preprocess, skimage.data.coffee()) & COFFEE_CLASSES
    x = encoder.preprocess(Image.fromarray(skimage.data.coffee())).unsqueeze(0)
    with torch.inference_mode():
        pooled, grid = encoder(x), encoder.forward_grid(x)
    assert pooled.shape == (1, encoder.feature_dim) == (1, 1280)
    assert grid.shape == (1, 1280, 7, 7)  # 224 px / stride 32
    torch.testing.assert_close(pooled, grid.mean(dim=(2, 3)))


def _reference_state_dict(name: str) -> tuple[dict[str, torch.Tensor], str]:
    """A full-model state dict in the original library's layout, and where the trunk sits in it."""
    torch.manual_seed(123)  # not the encoders' seed 0: loading must change the weights
    if name == "resnet50":
        return torchvision.models.resnet50(weights=None).state_dict(), ""
    if name == "resnet50_coco":
        detector = torchvision.models.detection.fasterrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None)
        return detector.state_dict(), "backbone.body."
    if name == "inception_v3":
        net = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=True)
        return net.state_dict(), ""
    net = build_encoder(EncoderConfig(name, "none"))
    return {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
            for k, v in net.encoder_state_dict().items()}, "trunk."


@pytest.mark.parametrize("name,dim,size", [("resnet50", 2048, 64), ("resnet50_coco", 2048, 64),
                                           ("inception_v3", 2048, 80), ("efficientnet_lite0", 1280, 64)])
def test_random_init_shapes_and_state_dict_file_round_trip(tmp_path, name, dim, size):
    encoder = build_encoder(EncoderConfig(name, "none"))
    assert encoder.feature_dim == dim
    x = torch.randn(2, 3, size, size)
    with torch.inference_mode():
        pooled, grid = encoder(x), encoder.forward_grid(x)
    assert pooled.shape == (2, dim) and grid.shape[:2] == (2, dim) and grid.ndim == 4

    state, prefix = _reference_state_dict(name)
    path = tmp_path / "weights.pth"
    torch.save(state, path)
    loaded = build_encoder(EncoderConfig(name, str(path)))
    changed = False
    for key, value in loaded.trunk.state_dict().items():
        assert torch.equal(value, state[prefix + key]), key
        changed |= not torch.equal(value, encoder.trunk.state_dict()[key])
    assert changed, "the file's weights equal the random init: the test proves nothing"
    assert loaded.fingerprint != encoder.fingerprint


def test_none_weights_are_deterministic_so_their_cache_is_valid():
    a, b = (build_encoder(EncoderConfig("efficientnet_lite0", "none")) for _ in range(2))
    assert a.fingerprint == b.fingerprint
    assert all(torch.equal(v, b.trunk.state_dict()[k]) for k, v in a.trunk.state_dict().items())


def test_state_dict_that_does_not_fit_names_the_keys(tmp_path):
    state = build_encoder(EncoderConfig("efficientnet_lite0", "none")).trunk.state_dict()
    del state["_conv_head.weight"]
    state["bogus.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(EncoderWeightsError, match=r"_conv_head\.weight.*bogus\.weight"):
        build_encoder(EncoderConfig("efficientnet_lite0", str(tmp_path / "bad.pth")))
    with pytest.raises(EncoderWeightsError, match="neither 'pretrained', 'none'"):
        build_encoder(EncoderConfig("efficientnet_lite0", str(tmp_path / "missing.pth")))
    with pytest.raises(ValueError, match="resnet50"):  # the message lists what exists
        build_encoder(EncoderConfig("resnet51", "none"))


@pytest.mark.parametrize("name,weights", [
    ("resnet50", torchvision.models.ResNet50_Weights.IMAGENET1K_V2),
    ("resnet50_coco", torchvision.models.detection.FasterRCNN_ResNet50_FPN_V2_Weights.COCO_V1),
    ("inception_v3", torchvision.models.Inception_V3_Weights.IMAGENET1K_V1),
])
def test_pretrained_without_cached_file_fails_fast_naming_the_file(tmp_path, monkeypatch, name, weights):
    old_hub = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    # Offline on purpose, also on a machine with network: the test must not download 100 MB.
    monkeypatch.setattr(encoder_weights, "can_reach", lambda url, timeout=2.0: False)
    try:
        start = time.perf_counter()
        with pytest.raises(EncoderWeightsError) as err:
            build_encoder(EncoderConfig(name, "pretrained"))
        assert time.perf_counter() - start < 3
    finally:
        torch.hub.set_dir(old_hub)
    filename = os.path.basename(urlparse(weights.url).path)
    message = str(err.value)
    assert str(tmp_path / "hub" / "checkpoints" / filename) in message
    assert "efficientnet_lite0" in message and "weights: none" in message


def test_network_probe_gives_up_quickly():
    start = time.perf_counter()
    assert encoder_weights.can_reach("https://no-such-host.invalid/x.pth", timeout=1.0) is False  # RFC 2606
    assert time.perf_counter() - start < 3


def test_unfreeze_last_trains_only_the_last_blocks():
    encoder = build_encoder(EncoderConfig("efficientnet_lite0", "none"))
    assert not any(p.requires_grad for p in encoder.parameters()) and not encoder.training
    params = encoder.unfreeze_last(2)  # last MBConv block + the 1x1 head conv
    expected = [p for n, p in encoder.trunk.named_parameters() if n.startswith(("_blocks.15.", "_conv_head.", "_bn1."))]
    assert {id(p) for p in params} == {id(p) for p in expected}
    assert {id(p) for p in encoder.parameters() if p.requires_grad} == {id(p) for p in expected}
    encoder.train()
    assert encoder.trunk._bn1.training and not encoder.trunk._bn0.training  # frozen BN keeps ImageNet stats
    loss = encoder(torch.randn(2, 3, 64, 64)).sum()
    loss.backward()
    assert all(p.grad is not None for p in params)
    assert encoder.unfreeze_last(0) == [] and not any(p.requires_grad for p in encoder.parameters())
    with pytest.raises(ValueError, match="17 blocks"):
        encoder.unfreeze_last(18)


def test_preprocess_round_trips_and_normalises():
    pre = build_encoder(EncoderConfig("efficientnet_lite0", "none")).preprocess
    assert Preprocess.from_dict(json.loads(json.dumps(pre.to_dict()))) == pre
    # Lite normalisation is (x - 127) / 128 on 0..255 pixels: 127 -> 0 and 255 -> 1.
    x = pre(Image.new("RGB", (640, 480), (127, 255, 127)))
    assert x.shape == (3, 224, 224)
    torch.testing.assert_close(x[0], torch.zeros(224, 224), atol=1e-5, rtol=0)
    torch.testing.assert_close(x[1], torch.ones(224, 224), atol=1e-5, rtol=0)
    assert set(list_encoders()) >= {"efficientnet_lite0", "resnet50", "resnet50_coco", "inception_v3"}
    with pytest.raises(ValueError, match="interpolation"):
        Preprocess(224, 256, (0.5,) * 3, (0.5,) * 3, "nearest-ish")


@pytest.mark.parametrize("size", [(160, 160), (640, 480), (333, 517), (224, 224), (225, 300)])
@pytest.mark.parametrize("pre", [Preprocess(224, 232, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                                 Preprocess(299, 342, (0.5,) * 3, (0.5,) * 3, "bicubic")])
def test_preprocess_equals_torchvision_transforms_exactly(size, pre):
    """Preprocess does not import torchvision (1.4 s per stage); its result must be bit-identical."""
    import torchvision.transforms.functional as TF
    rng = np.random.default_rng(size[0])
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    mode = {"bilinear": TF.InterpolationMode.BILINEAR, "bicubic": TF.InterpolationMode.BICUBIC}[pre.interpolation]
    ref = TF.center_crop(TF.resize(image, pre.resize, interpolation=mode), [pre.size, pre.size])
    ref = TF.normalize(TF.pil_to_tensor(ref).float().div_(255.0), list(pre.mean), list(pre.std))
    assert torch.equal(pre(image), ref)


def test_optimize_for_inference_keeps_lite_features():
    """Folding batch-norm into the convs must not change what the features stage stores."""
    encoder = build_encoder(EncoderConfig("efficientnet_lite0", "pretrained"))
    x = torch.randn(2, 3, 96, 96)
    with torch.inference_mode():
        before = encoder(x)
        encoder.optimize_for_inference()
        after = encoder(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in encoder.modules())
    assert torch.allclose(before, after, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError):  # the block layout is gone: no fine-tuning of a folded encoder
        encoder.unfreeze_last(1)


def test_image_size_rescales_preprocessing_and_changes_the_cache_key():
    native = build_encoder(EncoderConfig("efficientnet_lite0", "none"))
    small = build_encoder(EncoderConfig("efficientnet_lite0", "none", image_size=160))
    assert (small.preprocess.size, small.preprocess.resize) == (160, 183)  # crop fraction 0.875 kept
    assert small.preprocess.mean == native.preprocess.mean
    assert small.fingerprint != native.fingerprint  # features at another size are other features
    assert build_encoder(EncoderConfig("efficientnet_lite0", "none", image_size=224)).fingerprint == native.fingerprint
    x = small.preprocess(Image.new("RGB", (200, 120), (10, 20, 30))).unsqueeze(0)
    assert x.shape == (1, 3, 160, 160)
    with torch.inference_mode():
        assert small(x).shape == (1, 1280)
    with pytest.raises(ValueError, match="image_size"):
        EncoderConfig("efficientnet_lite0", "none", image_size=32)
