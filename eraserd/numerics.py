"""The numeric platform: what, besides a cluster's data, its seed and the config, decides its
trained prompt and head bit for bit. Recorded per cluster in every version, so that
``eraserd verify`` on another machine can say why a rebuild differs."""

from __future__ import annotations

import torch


def numeric_platform(device: str) -> str:
    """One line naming the torch build, the kind of device and the kernels it uses, e.g.
    ``torch 2.14.1; cpu AVX512; mkldnn 3.7.1`` or ``torch 2.14.1; cuda 12.8; cudnn 91000``."""
    parts = [f"torch {torch.__version__}"]
    if device.startswith("cuda"):
        parts.append(f"cuda {torch.version.cuda}")
        cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        parts.append(f"cudnn {cudnn}")
    else:
        parts.append(f"cpu {torch.backends.cpu.get_cpu_capability()}")
        onednn = getattr(torch.backends.mkldnn, "version", None)
        if torch.backends.mkldnn.is_available() and callable(onednn):
            parts.append(f"mkldnn {'.'.join(map(str, onednn()))}")
    return "; ".join(parts)
