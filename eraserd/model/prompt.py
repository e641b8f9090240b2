"""Pixel border prompts (paper, Definition 1 and Eq. 5): x~ = x + p on a border of fixed width."""

from __future__ import annotations

import torch


def border_mask(size: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """[1, 1, size, size] float mask: 1 on the ``width``-pixel border, 0 inside."""
    mask = torch.ones(1, 1, size, size, device=device)
    mask[..., width : size - width, width : size - width] = 0
    return mask


def apply_prompt(x: torch.Tensor, prompt: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Add a prompt ([3,S,S] or [B,3,S,S]) to normalised images, on the border only."""
    return x + prompt * mask
