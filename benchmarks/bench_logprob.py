"""soft_logprob on an all-soft batch (forward, and forward + backward to the logits) against
the release's way: a full-vocabulary softmax of logits / T, a gather of the K stored ids'
probabilities, renormalisation over the K, then the clamped Gumbel log-density, masked mean.

Stored ids are the top-K of the logits (as at rollout), perturbed = log p_hat + clamped
Gumbel noise. GPU N=4096 V=151936 bf16 logits; CPU N=2048 V=151936 fp32 (on CPU "ours" is
the pure-torch reference, the CPU kernel)."""

from __future__ import annotations

from typing import Any

import torch

import softgrpo
from benchmarks.common import Case

K = 5
T = 1.0
SHAPES = {"cuda": (4096, 151936, torch.bfloat16), "cpu": (2048, 151936, torch.float32)}


def _setup(n: int, vocab: int, dtype: torch.dtype, device: str, backward: bool
           ) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    logits = 2.0 * torch.randn(n, vocab, generator=g)
    top, ids = logits.topk(K, dim=-1)
    noise = -torch.log(torch.empty(n, K).exponential_(generator=g))
    perturbed = torch.log(torch.softmax(top / T, -1) + 1e-6) + noise.clamp(-1.5, 3.0)
    return dict(logits=logits.to(device, dtype).requires_grad_(backward), ids=ids.to(device),
                perturbed=perturbed.to(device))


def ours(d: dict[str, Any]) -> torch.Tensor:
    return softgrpo.soft_logprob(d["logits"], d["ids"], d["perturbed"], temperature=T)


def eager(d: dict[str, Any]) -> torch.Tensor:
    """The release: softmax over the full vocabulary, gather, renormalise over the K."""
    p = torch.softmax(d["logits"].float() / T, dim=-1)
    pk = p.gather(-1, d["ids"])
    lp = torch.log(pk / pk.sum(-1, keepdim=True) + 1e-6)
    g = (d["perturbed"] - lp).clamp(-1.5, 3.0)
    density = -g - torch.exp(-g)
    kept = (lp > -3.0).float()
    return (kept * density).sum(-1) / kept.sum(-1)


def _with_backward(fn):
    def run(d: dict[str, Any]) -> torch.Tensor:
        return torch.autograd.grad(fn(d).sum(), d["logits"])[0]
    return run


def cases(device: str) -> list[Case]:
    n, vocab, dtype = SHAPES["cuda" if device == "cuda" else "cpu"]
    shape = f"N={n} K={K} V={vocab} {str(dtype).removeprefix('torch.')}, all soft"
    return [
        Case(op=f"soft_logprob ({name})", shape=shape,
             setup=lambda backward=backward: _setup(n, vocab, dtype, device, backward),
             ours=_with_backward(ours) if backward else ours,
             eager=_with_backward(eager) if backward else eager)
        for name, backward in (("fwd", False), ("fwd+bwd", True))
    ]
