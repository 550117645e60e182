"""soft_logprob_from_hidden against the release's way: logits for every position, a
log-softmax over the full vocabulary, a gather of the K stored ids (forward + backward).

Rows: 0%, 10% and 100% discrete rows; GPU N=8192 H=1536 V=151936 bf16, CPU N=2048 H=512
V=151936 fp32 (K = 5, the published top-k)."""

from __future__ import annotations

import math
from typing import Any

import torch

from benchmarks.common import Case
from softgrpo.ops.fused_linear import soft_logprob_from_hidden
from softgrpo.reference.common import is_discrete
from softgrpo.reference.logprob import soft_rows

K = 5
SHAPES = {"cuda": (8192, 1536, 151936, torch.bfloat16), "cpu": (2048, 512, 151936, torch.float32)}


def _setup(n: int, hidden_size: int, vocab: int, dtype: torch.dtype, device: str,
           discrete: float) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(n, hidden_size, generator=g)
    weight = torch.randn(vocab, hidden_size, generator=g) * (2.0 / math.sqrt(hidden_size))
    ids = torch.randint(0, vocab // K, (n, K), generator=g) * K + torch.arange(K)  # distinct
    noise = -torch.log(torch.empty(n, K).exponential_(generator=g))
    perturbed = torch.log_softmax(2.0 * torch.randn(n, K, generator=g), -1) + noise.clamp(-1.5, 3)
    rows = torch.randperm(n, generator=g)[:round(discrete * n)]
    ids[rows, 1:] = 0
    perturbed[rows, 1:] = 0.0
    return dict(hidden=hidden.to(device, dtype).requires_grad_(),
                weight=weight.to(device, dtype).requires_grad_(),
                ids=ids.to(device), perturbed=perturbed.to(device))


def _grads(out: torch.Tensor, d: dict[str, Any]) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(out.sum(), (d["hidden"], d["weight"]))


def ours(d: dict[str, Any]) -> tuple[torch.Tensor, ...]:
    return _grads(soft_logprob_from_hidden(d["hidden"], d["weight"], d["ids"], d["perturbed"]), d)


def eager(d: dict[str, Any]) -> tuple[torch.Tensor, ...]:
    """The release: full logits, fp32 log-softmax over V, gather, renormalise over the K."""
    ids = d["ids"]
    log_p = torch.log_softmax((d["hidden"] @ d["weight"].T).float(), dim=-1)
    zk = log_p.gather(-1, ids)
    soft = soft_rows(zk, d["perturbed"], -1.5, 3.0, -3.0, 1e-6, "mean", "release", 0.0,
                     1.0)  # softmax(log p_k)
    return _grads(torch.where(is_discrete(ids), zk[:, 0], soft), d)


def cases(device: str) -> list[Case]:
    n, hidden_size, vocab, dtype = SHAPES["cuda" if device == "cuda" else "cpu"]
    dtype_name = str(dtype).removeprefix("torch.")
    return [
        Case(op="soft_logprob_from_hidden (fwd+bwd)",
             shape=f"N={n} H={hidden_size} V={vocab} K={K} {dtype_name}, "
                   f"{round(100 * discrete)}% discrete",
             setup=lambda discrete=discrete: _setup(n, hidden_size, vocab, dtype, device,
                                                    discrete),
             ours=ours, eager=eager)
        for discrete in (0.0, 0.1, 1.0)
    ]
