"""multiplex_sample, one Multiplex Thinking rollout step (spec section 10: K independent draws,
with replacement, from the top-k / top-p filtered distribution), against the release's way:
probs = softmax(logits / T) once, then K calls of a joint top-k / top-p sampler (the release
calls flashinfer's top_k_top_p_sampling_from_probs K times), each written plainly in eager
PyTorch without a sort of the row: torch.topk, top-p on the full-vocabulary mass inside the
top-k set, renormalisation, torch.multinomial; then the weights, the drawn probabilities
renormalised over the K draws.

Cases, K = 3, T = 1: no filter (the release's default) on flat logits 2 N(0, 1); no filter on
peaked logits (a confident step: PEAK_TOKENS tokens PEAK_GAP above a 2 N(0, 1) bulk); and
top_k = 64, top_p = 0.95 on the peaked logits (there top-p cuts). GPU B=256 and 1, bf16; CPU
B=64 and 1, fp32; V=151936 (Qwen). On CPU "ours" is the op's CPU kernel, the pure-torch
reference (softgrpo/reference/multiplex.py): Philox Gumbel noise in torch ops for every token
within GUMBEL_SPREAD of the row's maximum, so on flat logits for almost the whole row, K times;
the Triton kernels run on CUDA only."""

from __future__ import annotations

from typing import Any

import torch

import softgrpo
from benchmarks.common import Case

K = 3
T = 1.0
VOCAB = 151936
SHAPES = {"cuda": ((256, 1), torch.bfloat16), "cpu": ((64, 1), torch.float32)}
PEAK_TOKENS = 8
PEAK_GAP = 25.0  # leaves about 5e-7 of the mass to the bulk, 4 tokens in top-p 0.95
# (name, logits, top_k, top_p)
SETTINGS = (("no filter", "flat", None, 1.0), ("no filter", "peaked", None, 1.0),
            ("top_k=64 top_p=0.95", "peaked", 64, 0.95))


def make_logits(rows: int, vocab: int, kind: str, generator: torch.Generator) -> torch.Tensor:
    """(rows, vocab) fp32 logits: "flat" 2 N(0, 1); "peaked" the same bulk with PEAK_TOKENS
    random tokens per row raised by PEAK_GAP."""
    logits = 2.0 * torch.randn(rows, vocab, generator=generator)
    if kind == "peaked":
        top = torch.rand(rows, vocab, generator=generator).topk(PEAK_TOKENS, dim=-1).indices
        logits.scatter_add_(-1, top, torch.full(top.shape, PEAK_GAP))
    elif kind != "flat":
        raise ValueError(f"kind must be 'flat' or 'peaked', got {kind!r}")
    return logits


def joint_top_k_top_p_sample(probs: torch.Tensor, top_k: int | None, top_p: float,
                             generator: torch.Generator | None = None) -> torch.Tensor:
    """One call of the release's sampler (flashinfer's top_k_top_p_sampling_from_probs, joint
    order) in eager PyTorch: one id per row of probs (B, V) from the top_k most probable
    tokens cut by top-p on the full-vocabulary mass, renormalised. top_k None: no filter
    (top_p must be 1)."""
    if top_k is None:
        if top_p != 1.0:
            raise ValueError(f"top_p={top_p} needs top_k")
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    p, ids = torch.topk(probs, top_k, dim=-1)  # descending; a selection, not a sort of the row
    p = p.masked_fill(p.cumsum(-1) - p > top_p, 0.0)  # cut once the mass before exceeds top_p
    p = p / p.sum(-1, keepdim=True)
    return ids.gather(-1, torch.multinomial(p, 1, generator=generator)).squeeze(-1)


def _setup(rows: int, vocab: int, dtype: torch.dtype, device: str, kind: str,
           top_k: int | None, top_p: float) -> dict[str, Any]:
    logits = make_logits(rows, vocab, kind, torch.Generator().manual_seed(0))
    return dict(logits=logits.to(device, dtype), top_k=top_k, top_p=top_p, seed=1234,
                offset=17, generator=torch.Generator(device).manual_seed(5))


def ours(d: dict[str, Any]) -> softgrpo.MultiplexSample:
    return softgrpo.multiplex_sample(d["logits"], K, temperature=T, top_k=d["top_k"],
                                     top_p=d["top_p"], seed=d["seed"], offset=d["offset"])


def eager(d: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """The release's step: ids (B, K) from K sampler calls, and weights p(ids) / sum."""
    probs = torch.softmax(d["logits"].float() / T, dim=-1)
    ids = torch.stack([joint_top_k_top_p_sample(probs, d["top_k"], d["top_p"], d["generator"])
                       for _ in range(K)], dim=-1)
    p = probs.gather(-1, ids)  # the filter's renormalisation cancels in the weights
    return ids, p / p.sum(-1, keepdim=True)


def cases(device: str, *, batches: tuple[int, ...] | None = None,
          vocab: int = VOCAB) -> list[Case]:
    """The benchmark rows; batches and vocab override the shapes (tests run tiny ones)."""
    default_batches, dtype = SHAPES["cuda" if device == "cuda" else "cpu"]
    out = []
    for rows in batches or default_batches:
        for name, kind, top_k, top_p in SETTINGS:
            shape = (f"B={rows} K={K} V={vocab} {str(dtype).removeprefix('torch.')}, {name}, "
                     f"{kind} logits")
            out.append(Case(op="multiplex_sample", shape=shape, ours=ours, eager=eager,
                            setup=lambda rows=rows, kind=kind, top_k=top_k, top_p=top_p:
                            _setup(rows, vocab, dtype, device, kind, top_k, top_p)))
    return out
