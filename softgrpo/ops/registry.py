"""Register the Triton launchers as the CUDA kernels of the ops.

The default kernel of every op (CPU and any other device) is the reference in
softgrpo.reference; on CUDA tensors the launcher of the same name in softgrpo.kernels.<module>
runs instead, with the same arguments. Triton is imported on first CUDA use only.
Both run with autocast off: an op computes in its inputs' dtypes with fp32 accumulation,
whatever autocast region it is called from (autocast would turn its matmuls into bf16)."""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable

import torch
from torch._library.custom_ops import CustomOpDef


def without_autocast(fn: Callable) -> Callable:
    """Run ``fn`` with autocast off on the device of its first tensor argument."""

    @functools.wraps(fn)
    def run(*args):
        device = next(a.device for a in args if isinstance(a, torch.Tensor))
        with torch.autocast(device.type, enabled=False):
            return fn(*args)

    run.__signature__ = inspect.signature(fn, eval_str=True)  # custom_op reads the types here
    return run


def on_cuda(op: CustomOpDef, module: str, name: str,
            check: Callable[..., None] | None = None) -> None:
    """Make ``softgrpo.kernels.<module>.<name>`` the CUDA kernel of ``op``; ``check`` (the
    op's data checks) runs first, as in the default kernel."""

    @without_autocast
    def cuda_kernel(*args):
        if check is not None:
            check(*args)
        launcher = getattr(importlib.import_module(f"softgrpo.kernels.{module}"), name)
        device = next(a.device for a in args if isinstance(a, torch.Tensor))
        with torch.cuda.device(device):  # Triton launches on the current device
            return launcher(*args)

    op.register_kernel("cuda")(cuda_kernel)
