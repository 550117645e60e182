"""Small pieces shared by the reference implementations."""

from __future__ import annotations

import torch


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """fp32 for fp32/bf16/fp16 inputs, fp64 when any input is fp64 (for gradcheck)."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def is_discrete(ids: torch.Tensor) -> torch.Tensor:
    """The storage convention of spec section 2: a row is discrete iff all(ids[..., 1:] == 0)."""
    return (ids[..., 1:] == 0).all(dim=-1)
