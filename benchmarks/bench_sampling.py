"""soft_sample, one soft-thinking rollout step on an all-thinking batch, against the release's
way: logits / T, a full-vocabulary softmax, top-k and top-p renormalisation (sort + cumsum),
Gumbel noise from the global RNG, clamp, Gumbel-softmax weights, a sort of the slots by
weight, and the rollout log-prob.

GPU B=256 V=151936 bf16 logits; CPU B=64 V=151936 fp32 (on CPU "ours" is the pure-torch
reference, the CPU kernel); and B=1 on both, where fixed costs dominate (per-step decoding of
one sequence). Ours reads the logits once, so its floor is one read of them: ``bytes_read``
gives that count (also in the shape text) for an achieved-bandwidth column."""

from __future__ import annotations

from typing import Any

import torch

import softgrpo
from benchmarks.common import Case

K = 5
T = 1.0
TOP_P = 0.95
TAU = 0.1
NOISE_SCALE = 1.0
CLAMP = (-1.5, 3.0)
SHAPES = {"cuda": ((256, 1), 151936, torch.bfloat16), "cpu": ((64, 1), 151936, torch.float32)}


def _setup(rows: int, vocab: int, dtype: torch.dtype, device: str) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    logits = 2.0 * torch.randn(rows, vocab, generator=g)
    return dict(logits=logits.to(device, dtype), seed=1234, offset=17)


def bytes_read(inputs: dict[str, Any]) -> int:
    """Bytes ours must read at least: the logits, once."""
    return inputs["logits"].numel() * inputs["logits"].element_size()


def ours(d: dict[str, Any]) -> softgrpo.SoftSample:
    return softgrpo.soft_sample(d["logits"], K, temperature=T, top_p=TOP_P, tau=TAU,
                               noise_scale=NOISE_SCALE, seed=d["seed"], offset=d["offset"],
                               noise_clamp=CLAMP)


def eager(d: dict[str, Any]) -> tuple[torch.Tensor, ...]:
    """The release's step in eager PyTorch (ids, perturbed, weights, rollout log-prob)."""
    probs = torch.softmax(d["logits"].float() / T, dim=-1)
    p, ids = torch.topk(probs, K, dim=-1)
    p = p / p.sum(-1, keepdim=True)
    p, order = torch.sort(p, dim=-1, descending=True)
    ids = ids.gather(-1, order)
    p = p.masked_fill(p.cumsum(-1) - p > TOP_P, 0.0)
    p = p / p.sum(-1, keepdim=True)
    log_p = torch.log(p + 1e-6)
    g = (-torch.log(-torch.log(torch.rand_like(log_p)))).clamp(*CLAMP)
    y = log_p + NOISE_SCALE * g
    weights, order = torch.sort(torch.softmax(y / TAU, dim=-1), dim=-1, descending=True)
    ids, y, g, log_p = (t.gather(-1, order) for t in (ids, y, g, log_p))
    kept = (log_p > -3.0).float()
    logprob = (kept * (-g - torch.exp(-g))).sum(-1) / kept.sum(-1)
    return ids, y, weights, logprob


def cases(device: str) -> list[Case]:
    batches, vocab, dtype = SHAPES["cuda" if device == "cuda" else "cpu"]
    out = []
    for rows in batches:
        floor_mb = rows * vocab * dtype.itemsize / 1e6
        shape = (f"B={rows} K={K} V={vocab} {str(dtype).removeprefix('torch.')}, all soft, "
                 f"one read {floor_mb:.1f} MB")
        out.append(Case(op="soft_sample", shape=shape, ours=ours, eager=eager,
                        setup=lambda rows=rows: _setup(rows, vocab, dtype, device)))
    return out
