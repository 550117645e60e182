"""Register the Triton launchers as the CUDA kernels of the ops.

The default kernel of every op (CPU and any other device) is the reference in
softgrpo.reference; on CUDA tensors the launcher of the same name in softgrpo.kernels.<module>
runs instead, with the same arguments. Triton is imported on first CUDA use only."""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch
from torch._library.custom_ops import CustomOpDef


def on_cuda(op: CustomOpDef, module: str, name: str,
            check: Callable[..., None] | None = None) -> None:
    """Make ``softgrpo.kernels.<module>.<name>`` the CUDA kernel of ``op``; ``check`` (the
    op's data checks) runs first, as in the default kernel."""

    def cuda_kernel(*args):
        if check is not None:
            check(*args)
        launcher = getattr(importlib.import_module(f"softgrpo.kernels.{module}"), name)
        device = next(a.device for a in args if isinstance(a, torch.Tensor))
        with torch.cuda.device(device):  # Triton launches on the current device
            return launcher(*args)

    op.register_kernel("cuda")(cuda_kernel)
