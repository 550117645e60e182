"""Reference for soft_logprob_from_hidden: the training-side log-prob (spec section 4) from the
last hidden states and the LM head, without full-vocabulary logits.

A soft row needs only its K logits (the full-vocabulary normaliser cancels): K gathered rows
of the head, K dot products. A discrete row needs log_softmax over V: its logits are formed
in blocks of at most chunk_size tokens x chunk_size vocabulary entries folded into a running
log-sum-exp, so one block is alive at a time. The backward recomputes every block from the
saved log-sum-exp instead of keeping a gradient computed in the forward: that shortcut
(Liger-Kernel's fused linear cross-entropy) is only valid for a scalar upstream gradient
(Liger-Kernel issue #968), ours is per token.

The block loops (subtract_normalisers, normaliser_backward) are shared with the Triton path,
which passes its own per-block kernels and does the block GEMMs in the input dtype."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch

from softgrpo.reference.common import compute_dtype, is_discrete
from softgrpo.reference.logprob import soft_rows, soft_rows_backward

Tensor = torch.Tensor
# (logits block (r, c), bias block (c,) or None, running lse (r,) updated in place, T)
BlockLse = Callable[[Tensor, "Tensor | None", Tensor, float], None]
# (logits block (r, c), bias block or None, lse (r,), upstream grad (r,), T) -> block gradient
BlockGrad = Callable[[Tensor, "Tensor | None", Tensor, Tensor, float], Tensor]

MAX_CHUNK = 4096


def default_chunk_size(num_rows: int, vocab: int) -> int:
    """Blocks of at most 4096 x 4096 logits (64 MiB in fp32), no larger than the problem."""
    return max(1, min(MAX_CHUNK, max(num_rows, vocab)))


def _spans(total: int, size: int) -> list[tuple[int, int]]:
    return [(a, min(a + size, total)) for a in range(0, total, size)]


def flat(hidden: Tensor, ids: Tensor, perturbed: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(N, H) hidden, (N, K) int64 ids and (N, K) perturbed from their (..., H|K) forms."""
    k = ids.shape[-1]
    return (hidden.reshape(-1, hidden.shape[-1]), ids.reshape(-1, k).long(),
            perturbed.reshape(-1, k))


def cast_grads(grad_h: Tensor, grad_w: Tensor, grad_b: Tensor | None, hidden: Tensor,
               weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients in the input dtypes; an empty grad_bias stands for "no bias"."""
    grad_b = weight.new_zeros(0) if grad_b is None else grad_b.to(bias.dtype)
    return grad_h.to(hidden.dtype).reshape(hidden.shape), grad_w.to(weight.dtype), grad_b


def subtract_normalisers(out: Tensor, h: Tensor, weight: Tensor, bias: Tensor | None,
                         ids2: Tensor, temperature: float, chunk_size: int,
                         mm_dtype: torch.dtype, block_lse: BlockLse,
                         full: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The rows ``full`` (N,) bool (default: the discrete rows) of out (N,) hold a scaled
    logit: subtract the log-sum-exp over the vocabulary of (h @ weight.T + bias) / T, built
    block by block. Returns (out, lse), lse (N,) in out's dtype with 0 at the other rows."""
    rows = (is_discrete(ids2) if full is None else full).nonzero().squeeze(-1)
    x = h.index_select(0, rows).to(mm_dtype)
    lse_d = torch.full(rows.shape, -math.inf, dtype=out.dtype, device=out.device)
    for v0, v1 in _spans(weight.shape[0] if rows.numel() else 0, chunk_size):  # no rows: none
        w = weight[v0:v1].to(mm_dtype)
        b = None if bias is None else bias[v0:v1]
        for r0, r1 in _spans(rows.numel(), chunk_size):
            block_lse(x[r0:r1] @ w.T, b, lse_d[r0:r1], temperature)
    lse = torch.zeros_like(out).index_copy_(0, rows, lse_d)
    return out - lse, lse


def normaliser_backward(go: Tensor, h: Tensor, weight: Tensor, bias: Tensor | None,
                        ids2: Tensor, lse: Tensor, temperature: float, chunk_size: int,
                        mm_dtype: torch.dtype, acc_dtype: torch.dtype,
                        grad_w_dtype: torch.dtype, block_grad: BlockGrad,
                        full: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
    """Gradient of go * (-lse) at the rows ``full`` (default: the discrete rows), block by
    block (each block recomputed).

    Returns grad_h (N, H) in acc_dtype (zero at the other rows), grad_w (V, H) in grad_w_dtype
    and grad_b (V,) in acc_dtype (None without bias), for the gathered path to add to."""
    rows = (is_discrete(ids2) if full is None else full).nonzero().squeeze(-1)
    x, go_d, lse_d = h.index_select(0, rows).to(mm_dtype), go[rows], lse[rows]
    grad_hd = torch.zeros(x.shape, dtype=acc_dtype, device=h.device)
    grad_w = torch.zeros(weight.shape, dtype=grad_w_dtype, device=weight.device)
    grad_b = None if bias is None else torch.zeros(weight.shape[:1], dtype=acc_dtype,
                                                   device=weight.device)
    for v0, v1 in _spans(weight.shape[0] if rows.numel() else 0, chunk_size):  # no rows: none
        w = weight[v0:v1].to(mm_dtype)
        b = None if bias is None else bias[v0:v1]
        # sum the row blocks of grad_w in acc_dtype: in place, or in a (chunk, H) buffer
        same = grad_w.dtype == acc_dtype
        grad_wv = grad_w[v0:v1] if same else torch.zeros(w.shape, dtype=acc_dtype,
                                                         device=w.device)
        for r0, r1 in _spans(rows.numel(), chunk_size):
            d = block_grad(x[r0:r1] @ w.T, b, lse_d[r0:r1], go_d[r0:r1], temperature)
            grad_hd[r0:r1] += d @ w
            grad_wv += d.T @ x[r0:r1]
            if grad_b is not None:
                grad_b[v0:v1] += d.sum(0, dtype=acc_dtype)
        if not same:
            grad_w[v0:v1] += grad_wv
    grad_h = torch.zeros((h.shape[0], h.shape[1]), dtype=acc_dtype, device=h.device)
    return grad_h.index_copy_(0, rows, grad_hd), grad_w, grad_b


def _scaled(z: Tensor, b: Tensor | None, temperature: float) -> Tensor:
    """(z + b) / T in place: z is a fresh block of logits that nothing else holds."""
    z = z if b is None else z.add_(b.to(z.dtype))
    return z if temperature == 1.0 else z.div_(temperature)


def _block_lse(z: Tensor, b: Tensor | None, lse: Tensor, temperature: float) -> None:
    lse.copy_(torch.logaddexp(lse, torch.logsumexp(_scaled(z, b, temperature), dim=-1)))


def _block_grad(z: Tensor, b: Tensor | None, lse: Tensor, go: Tensor,
                temperature: float) -> Tensor:
    """-go/T * softmax(z/T): the normaliser's share; the label's +go/T is in the gathered path."""
    d = _scaled(z, b, temperature).sub_(lse[:, None]).exp_()
    return d.mul_((-go / temperature)[:, None])


def _slots(h: Tensor, weight: Tensor, ids2: Tensor, dtype: torch.dtype, chunk_size: int,
           wide: Tensor | None) -> Iterator[tuple[Tensor, int, Tensor, Tensor]]:
    """(rows, slot j, h[rows], weight[ids[rows, j]]), in dtype, chunk_size rows at a time: slot
    0 of every row, the other slots of the rows ``wide`` (default: the soft rows; a discrete
    row's are padding). These are the only head rows the gathered path reads, (chunk, H) at a
    time."""
    every = torch.arange(h.shape[0], device=h.device)
    soft = (~is_discrete(ids2) if wide is None else wide).nonzero().squeeze(-1)
    for j in range(ids2.shape[1]):
        rows_j = every if j == 0 else soft
        for a, b in _spans(rows_j.numel(), chunk_size):
            rows = rows_j[a:b]
            yield (rows, j, h.index_select(0, rows).to(dtype),
                   weight.index_select(0, ids2[rows, j]).to(dtype))


def gathered_logits(h: Tensor, weight: Tensor, bias: Tensor | None, ids2: Tensor,
                    dtype: torch.dtype, chunk_size: int, wide: Tensor | None = None) -> Tensor:
    """The (N, K) logits h[n] . weight[ids[n, j]] + bias[ids[n, j]] in dtype, slots >= 1 of the
    rows ``wide`` only (default: the soft rows; the others' padding slots get bias alone:
    nothing reads them)."""
    out = torch.zeros(ids2.shape, dtype=dtype, device=h.device)
    for rows, j, x, w_rows in _slots(h, weight, ids2, dtype, chunk_size, wide):
        out[rows, j] = torch.linalg.vecdot(w_rows, x)
    return out if bias is None else out + bias[ids2].to(dtype)


def gathered_backward(d_zk: Tensor, h: Tensor, weight: Tensor, ids2: Tensor, grad_h: Tensor,
                      grad_w: Tensor, grad_b: Tensor | None, dtype: torch.dtype,
                      chunk_size: int, wide: Tensor | None = None) -> None:
    """Add the gradient of the gathered logits, coefficients d_zk (N, K) w.r.t. the raw
    logits, to grad_h, grad_w and grad_b in place (slots as gathered_logits reads them)."""
    for rows, j, x, w_rows in _slots(h, weight, ids2, dtype, chunk_size, wide):
        c = d_zk[rows, j, None]
        grad_h.index_add_(0, rows, c * w_rows)
        grad_w.index_add_(0, ids2[rows, j], c * x)
    if grad_b is not None:
        grad_b.index_add_(0, ids2.reshape(-1), d_zk.reshape(-1))


def soft_logprob_from_hidden(hidden: Tensor, weight: Tensor, bias: Tensor | None, ids: Tensor,
                             perturbed: Tensor, temperature: float, clamp_lo: float,
                             clamp_hi: float, mask_threshold: float, eps: float, reduction: str,
                             likelihood: str, conditional_weight: float, noise_scale: float,
                             chunk_size: int) -> tuple[Tensor, Tensor]:
    """(log-prob, lse), both (...) in the compute dtype; lse is saved for the backward."""
    dtype = compute_dtype(hidden, weight, perturbed)
    h, ids2, y = flat(hidden, ids, perturbed)
    zk = gathered_logits(h, weight, bias, ids2, dtype, chunk_size) / temperature
    soft = soft_rows(zk, y.to(dtype), clamp_lo, clamp_hi, mask_threshold, eps, reduction,
                     likelihood, conditional_weight, noise_scale)
    out = torch.where(is_discrete(ids2), zk[:, 0], soft)  # discrete rows: the label's logit
    out, lse = subtract_normalisers(out, h, weight, bias, ids2, temperature, chunk_size, dtype,
                                    _block_lse)
    return out.reshape(ids.shape[:-1]), lse.reshape(ids.shape[:-1])


def soft_logprob_from_hidden_backward(grad: Tensor, hidden: Tensor, weight: Tensor,
                                      bias: Tensor | None, ids: Tensor, perturbed: Tensor,
                                      lse: Tensor, temperature: float, clamp_lo: float,
                                      clamp_hi: float, mask_threshold: float, eps: float,
                                      reduction: str, likelihood: str, conditional_weight: float,
                                      noise_scale: float, chunk_size: int
                                      ) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients w.r.t. hidden, weight and bias (empty (0,) without bias)."""
    dtype = compute_dtype(hidden, weight, perturbed)
    h, ids2, y = flat(hidden, ids, perturbed)
    go = grad.reshape(-1).to(dtype)
    grad_h, grad_w, grad_b = normaliser_backward(go, h, weight, bias, ids2, lse.reshape(-1),
                                                 temperature, chunk_size, dtype, dtype, dtype,
                                                 _block_grad)
    zk = gathered_logits(h, weight, bias, ids2, dtype, chunk_size) / temperature
    d_zk = soft_rows_backward(go[:, None], zk, y.to(dtype), temperature, clamp_lo, clamp_hi,
                              mask_threshold, eps, reduction, likelihood, conditional_weight,
                              noise_scale)
    label = torch.zeros_like(d_zk)
    label[:, 0] = go / temperature
    d_zk = torch.where(is_discrete(ids2)[:, None], label, d_zk)  # discrete: d/d label logit
    gathered_backward(d_zk, h, weight, ids2, grad_h, grad_w, grad_b, dtype, chunk_size)
    return cast_grads(grad_h, grad_w, grad_b, hidden, weight, bias)
