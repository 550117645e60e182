"""soft_embedding and soft_token_embedding (forward + backward to the table and the weights /
perturbed values) against the release's way: F.embedding of the (N, K) ids, then a weighted
sum over the K rows (after softmax(perturbed / tau) for the token op).

All-soft batches of distinct top-k-like ids. GPU N=8192 K=5 H=1536 V=151936 bf16; CPU
N=2048 K=5 H=512 V=151936 fp32 (on CPU "ours" is the pure-torch reference, the CPU kernel)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

import softgrpo
from benchmarks.common import Case

K = 5
TAU = 0.1
SHAPES = {"cuda": (8192, 1536, 151936, torch.bfloat16), "cpu": (2048, 512, 151936, torch.float32)}


def _setup(n: int, hidden_size: int, vocab: int, dtype: torch.dtype,
           device: str) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab // K, (n, K), generator=g) * K + torch.arange(K)  # distinct
    perturbed = torch.log_softmax(2.0 * torch.randn(n, K, generator=g), -1)
    perturbed = perturbed - torch.log(torch.empty(n, K).exponential_(generator=g))  # + Gumbel
    return dict(table=torch.randn(vocab, hidden_size, generator=g).to(device, dtype)
                .requires_grad_(),
                ids=ids.to(device),
                weights=torch.softmax(perturbed / TAU, -1).to(device).requires_grad_(),
                perturbed=perturbed.to(device).requires_grad_(),
                grad=torch.randn(n, hidden_size, generator=g).to(device, dtype))


def _weighted_rows(table: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The release: gather the K embedding rows, weight them, sum (fp32 products)."""
    rows = F.embedding(ids, table).float()  # (N, K, H)
    return (weights.unsqueeze(-1) * rows).sum(-2).to(table.dtype)


def _grads(out: torch.Tensor, d: dict[str, Any], wrt: str) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(out, (d["table"], d[wrt]), d["grad"])


def ours_embedding(d: dict[str, Any]) -> tuple[torch.Tensor, ...]:
    return _grads(softgrpo.soft_embedding(d["table"], d["ids"], d["weights"]), d, "weights")


def eager_embedding(d: dict[str, Any]) -> tuple[torch.Tensor, ...]:
    return _grads(_weighted_rows(d["table"], d["ids"], d["weights"]), d, "weights")


def ours_token(d: dict[str, Any]) -> tuple[torch.Tensor, ...]:
    out = softgrpo.soft_token_embedding(d["table"], d["ids"], d["perturbed"], TAU)
    return _grads(out, d, "perturbed")


def eager_token(d: dict[str, Any]) -> tuple[torch.Tensor, ...]:
    weights = torch.softmax(d["perturbed"] / TAU, -1)
    return _grads(_weighted_rows(d["table"], d["ids"], weights), d, "perturbed")


def cases(device: str) -> list[Case]:
    n, hidden_size, vocab, dtype = SHAPES["cuda" if device == "cuda" else "cpu"]
    shape = f"N={n} K={K} H={hidden_size} V={vocab} {str(dtype).removeprefix('torch.')}"

    def setup() -> dict[str, Any]:
        return _setup(n, hidden_size, vocab, dtype, device)

    return [
        Case(op="soft_embedding (fwd+bwd)", shape=shape, setup=setup, ours=ours_embedding,
             eager=eager_embedding),
        Case(op="soft_token_embedding (fwd+bwd)", shape=f"{shape}, tau={TAU}", setup=setup,
             ours=ours_token, eager=eager_token),
    ]
