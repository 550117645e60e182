"""Triton kernels of soft_logprob_from_hidden; the launchers take the reference's arguments.

Soft rows: a gather-GEMV kernel, one program per row, reads the K head rows at the row's ids,
forms the K logits in fp32 and the soft log-prob in one pass (a discrete row stores its label
logit instead). Its backward recomputes them, adds grad_hidden = sum_j c_j W[ids_j] and
stores the K coefficients c. The rows of grad_weight (and grad_bias) are then summed per id
after a stable sort of the ids: one program per (distinct id, block of H) reduces its entries
in sorted order, so the result is deterministic without float atomics. The segments of equal
ids are found on the device; sizing that grid costs one host sync (nonzero), as the discrete
rows' nonzero in the same backward does.

Discrete rows: the reference's block loops with cuBLAS GEMMs in the input dtype, and a Triton
kernel per logits block that folds the block into the running log-sum-exp (forward) or turns
the recomputed block into its gradient in place (backward).

multiplex_logprob_from_hidden: a gather-GEMV kernel stores the K + W logits of each row's
draws and kept set (slot 0 only for a discrete row); the rows normalised over the vocabulary
take the block loops above; the per-row arithmetic on those (N, K + W) values is the
reference's (softgrpo/reference/multiplex_logprob.py). Its backward adds the coefficients'
head rows to grad_hidden in a kernel and reduces grad_weight per id as above.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from softgrpo.kernels.embedding import discrete_row
from softgrpo.kernels.logprob import FP_FUSION, LIKELIHOOD_CODES, soft_row, soft_row_grad
from softgrpo.reference import multiplex_logprob as mlp
from softgrpo.reference.common import compute_dtype, is_discrete
from softgrpo.reference.fused_linear import (
    cast_grads,
    flat,
    normaliser_backward,
    subtract_normalisers,
)

Tensor = torch.Tensor
NUM_WARPS = 4


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


@triton.jit
def _row_logits(h_row, w_ptr, b_ptr, ids, k_mask, H, stride_w, temperature,
                HAS_BIAS: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_H: tl.constexpr,
                ACC: tl.constexpr):
    """The K logits (h . W[ids_j] + b[ids_j]) / T of one row, accumulated in ACC."""
    z = tl.zeros([BLOCK_K], dtype=ACC)
    for h0 in range(0, H, BLOCK_H):
        offs = h0 + tl.arange(0, BLOCK_H)
        h_mask = offs < H
        x = tl.load(h_row + offs, mask=h_mask, other=0.0).to(ACC)
        w = tl.load(w_ptr + ids[:, None] * stride_w + offs[None, :],
                    mask=k_mask[:, None] & h_mask[None, :], other=0.0).to(ACC)
        z += tl.sum(w * x[None, :], axis=1)
    if HAS_BIAS:
        z += tl.load(b_ptr + ids, mask=k_mask, other=0.0).to(ACC)
    return z / temperature


@triton.jit
def _row_setup(ids_ptr, y_ptr, row, K, BLOCK_K: tl.constexpr, ACC: tl.constexpr):
    offs_k = tl.arange(0, BLOCK_K)
    k_mask = offs_k < K
    ids = tl.load(ids_ptr + row * K + offs_k, mask=k_mask, other=0).to(tl.int64)
    y = tl.load(y_ptr + row * K + offs_k, mask=k_mask, other=0.0).to(ACC)
    disc = discrete_row(ids, offs_k)  # padding lanes hold id 0
    return offs_k, k_mask, ids, y, disc


@triton.jit
def _soft_fwd_kernel(h_ptr, w_ptr, b_ptr, ids_ptr, y_ptr, out_ptr, K, H, stride_h, stride_w,
                     temperature, clamp_lo, clamp_hi, mask_threshold, eps, weight, scale,
                     HAS_BIAS: tl.constexpr, LIKELIHOOD: tl.constexpr, MEAN: tl.constexpr,
                     BLOCK_K: tl.constexpr, BLOCK_H: tl.constexpr, ACC: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs_k, k_mask, ids, y, disc = _row_setup(ids_ptr, y_ptr, row, K, BLOCK_K, ACC)
    zk = _row_logits(h_ptr + row * stride_h, w_ptr, b_ptr, ids, k_mask, H, stride_w,
                     temperature, HAS_BIAS, BLOCK_K, BLOCK_H, ACC)
    out = soft_row(zk, y, k_mask, offs_k, clamp_lo, clamp_hi, mask_threshold, eps, weight, scale,
                   LIKELIHOOD, MEAN)
    label = tl.sum(tl.where(offs_k == 0, zk, 0.0), axis=0)  # normalised by the block path
    tl.store(out_ptr + row, tl.where(disc, label, out))


@triton.jit
def _soft_bwd_kernel(go_ptr, h_ptr, w_ptr, b_ptr, ids_ptr, y_ptr, gh_ptr, coef_ptr, K, H,
                     stride_h, stride_w, stride_gh, temperature, clamp_lo, clamp_hi,
                     mask_threshold, eps, weight, scale, HAS_BIAS: tl.constexpr,
                     LIKELIHOOD: tl.constexpr, MEAN: tl.constexpr, BLOCK_K: tl.constexpr,
                     BLOCK_H: tl.constexpr, ACC: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs_k, k_mask, ids, y, disc = _row_setup(ids_ptr, y_ptr, row, K, BLOCK_K, ACC)
    go = tl.load(go_ptr + row).to(ACC)
    zk = _row_logits(h_ptr + row * stride_h, w_ptr, b_ptr, ids, k_mask, H, stride_w,
                     temperature, HAS_BIAS, BLOCK_K, BLOCK_H, ACC)
    d_zk = soft_row_grad(zk, y, k_mask, offs_k, go, temperature, clamp_lo, clamp_hi,
                         mask_threshold, eps, weight, scale, LIKELIHOOD, MEAN)
    # a discrete row: d/d label logit; its -softmax share comes from the block path
    d_zk = tl.where(disc, tl.where(offs_k == 0, go / temperature, 0.0), d_zk)
    d_zk = tl.where(k_mask, d_zk, 0.0)
    tl.store(coef_ptr + row * K + offs_k, d_zk, mask=k_mask)
    _add_head_rows(gh_ptr + row * stride_gh, d_zk, w_ptr, ids, k_mask, H, stride_w, BLOCK_H,
                   ACC)


@triton.jit
def _add_head_rows(gh_row, c, w_ptr, ids, k_mask, H, stride_w, BLOCK_H: tl.constexpr,
                   ACC: tl.constexpr):
    """grad_h[row] += sum_j c_j W[ids_j] (c zero outside k_mask)."""
    for h0 in range(0, H, BLOCK_H):
        offs = h0 + tl.arange(0, BLOCK_H)
        h_mask = offs < H
        w = tl.load(w_ptr + ids[:, None] * stride_w + offs[None, :],
                    mask=k_mask[:, None] & h_mask[None, :], other=0.0).to(ACC)
        gh = gh_row + offs
        tl.store(gh, tl.load(gh, mask=h_mask, other=0.0) + tl.sum(c[:, None] * w, axis=0),
                 mask=h_mask)


@triton.jit
def _gather_setup(ids_ptr, wide_ptr, row, M, BLOCK_K: tl.constexpr):
    """Slots a row reads: all M when wide, else slot 0 only."""
    offs_k = tl.arange(0, BLOCK_K)
    width = tl.where(tl.load(wide_ptr + row) != 0, M, 1)
    k_mask = offs_k < width
    ids = tl.load(ids_ptr + row * M + offs_k, mask=k_mask, other=0).to(tl.int64)
    return offs_k, k_mask, ids


@triton.jit
def _gather_fwd_kernel(h_ptr, w_ptr, b_ptr, ids_ptr, wide_ptr, out_ptr, M, H, stride_h,
                       stride_w, temperature, HAS_BIAS: tl.constexpr, BLOCK_K: tl.constexpr,
                       BLOCK_H: tl.constexpr, ACC: tl.constexpr):
    """The M logits (h . W[ids_j] + b[ids_j]) / T of a row (slot 0 only where not wide)."""
    row = tl.program_id(0).to(tl.int64)
    offs_k, k_mask, ids = _gather_setup(ids_ptr, wide_ptr, row, M, BLOCK_K)
    zk = _row_logits(h_ptr + row * stride_h, w_ptr, b_ptr, ids, k_mask, H, stride_w,
                     temperature, HAS_BIAS, BLOCK_K, BLOCK_H, ACC)
    tl.store(out_ptr + row * M + offs_k, tl.where(k_mask, zk, 0.0), mask=offs_k < M)


@triton.jit
def _gather_bwd_kernel(coef_ptr, w_ptr, ids_ptr, wide_ptr, gh_ptr, M, H, stride_w, stride_gh,
                       BLOCK_K: tl.constexpr, BLOCK_H: tl.constexpr, ACC: tl.constexpr):
    """grad_h[row] += sum_j coef_j W[ids_j] over the slots the row reads."""
    row = tl.program_id(0).to(tl.int64)
    offs_k, k_mask, ids = _gather_setup(ids_ptr, wide_ptr, row, M, BLOCK_K)
    c = tl.load(coef_ptr + row * M + offs_k, mask=k_mask, other=0.0).to(ACC)
    _add_head_rows(gh_ptr + row * stride_gh, c, w_ptr, ids, k_mask, H, stride_w, BLOCK_H, ACC)


@triton.jit
def _scatter_rows_kernel(keys_ptr, order_ptr, bounds_ptr, coef_ptr, h_ptr, gw_ptr, gb_ptr, K, H,
                         stride_h, stride_gw, HAS_BIAS: tl.constexpr, BLOCK_P: tl.constexpr,
                         BLOCK_H: tl.constexpr, ACC: tl.constexpr):
    """grad_w[id] += sum of c * h over the sorted entries of one id: program (s, h-block)
    reduces segment s, the sorted entries bounds[s]:bounds[s + 1]."""
    seg = tl.program_id(0)
    hb = tl.program_id(1)
    start = tl.load(bounds_ptr + seg)
    end = tl.load(bounds_ptr + seg + 1)
    key = tl.load(keys_ptr + start)
    offs_h = hb * BLOCK_H + tl.arange(0, BLOCK_H)
    h_mask = offs_h < H
    acc = tl.zeros([BLOCK_H], dtype=ACC)
    total = tl.zeros([BLOCK_P], dtype=ACC)
    for q0 in range(start, end, BLOCK_P):
        q = q0 + tl.arange(0, BLOCK_P)
        q_mask = q < end
        src = tl.load(order_ptr + q, mask=q_mask, other=0)  # flat index row * K + slot
        c = tl.load(coef_ptr + src, mask=q_mask, other=0.0).to(ACC)
        x = tl.load(h_ptr + (src // K)[:, None] * stride_h + offs_h[None, :],
                    mask=q_mask[:, None] & h_mask[None, :], other=0.0).to(ACC)
        acc += tl.sum(c[:, None] * x, axis=0)
        total += c
    gw = gw_ptr + key * stride_gw + offs_h
    old = tl.load(gw, mask=h_mask, other=0.0).to(ACC)
    tl.store(gw, (old + acc).to(gw_ptr.dtype.element_ty), mask=h_mask)
    if HAS_BIAS:  # noqa: SIM102 (a constexpr, then a runtime condition: kept apart for Triton)
        if hb == 0:
            tl.store(gb_ptr + key, tl.load(gb_ptr + key) + tl.sum(total, axis=0))


@triton.jit
def _block_row(z_row, b_ptr, v0, cols, temperature, HAS_BIAS: tl.constexpr,
               BLOCK_V: tl.constexpr, ACC: tl.constexpr):
    offs = v0 + tl.arange(0, BLOCK_V)
    mask = offs < cols
    z = tl.load(z_row + offs, mask=mask, other=float("-inf")).to(ACC)
    if HAS_BIAS:
        z += tl.load(b_ptr + offs, mask=mask, other=0.0).to(ACC)
    return offs, mask, z / temperature


@triton.jit
def _safe(m):
    """A finite shift for exp(x - m): a row that is all -inf gets 0, so its sum is exp(-inf)."""
    return tl.where(m == float("-inf"), 0.0, m)


@triton.jit
def _block_lse_kernel(z_ptr, stride_z, b_ptr, lse_ptr, cols, temperature,
                      HAS_BIAS: tl.constexpr, BLOCK_V: tl.constexpr, ACC: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)
    z_row = z_ptr + r * stride_z
    mx = tl.full([BLOCK_V], float("-inf"), dtype=ACC)
    for v0 in range(0, cols, BLOCK_V):
        _, _, z = _block_row(z_row, b_ptr, v0, cols, temperature, HAS_BIAS, BLOCK_V, ACC)
        mx = tl.maximum(mx, z)
    m = _safe(tl.max(mx, axis=0))
    se = tl.zeros([BLOCK_V], dtype=ACC)
    for v0 in range(0, cols, BLOCK_V):
        _, _, z = _block_row(z_row, b_ptr, v0, cols, temperature, HAS_BIAS, BLOCK_V, ACC)
        se += tl.exp(z - m)
    block = m + tl.log(tl.sum(se, axis=0))
    old = tl.load(lse_ptr + r)
    top = _safe(tl.maximum(old, block))
    tl.store(lse_ptr + r, top + tl.log(tl.exp(old - top) + tl.exp(block - top)))  # logaddexp


@triton.jit
def _block_grad_kernel(z_ptr, stride_z, b_ptr, lse_ptr, go_ptr, cols, temperature,
                       HAS_BIAS: tl.constexpr, BLOCK_V: tl.constexpr, ACC: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)
    z_row = z_ptr + r * stride_z
    offs, mask, z = _block_row(z_row, b_ptr, tl.program_id(1) * BLOCK_V, cols, temperature,
                               HAS_BIAS, BLOCK_V, ACC)
    lse = tl.load(lse_ptr + r).to(ACC)
    go = tl.load(go_ptr + r).to(ACC)
    d = tl.exp(z - lse) * (-go / temperature)
    tl.store(z_row + offs, d.to(z_ptr.dtype.element_ty), mask=mask)


def _block_v(cols: int) -> int:
    return min(1024, triton.next_power_of_2(max(cols, 1)))


def _block_lse(z: Tensor, b: Tensor | None, lse: Tensor, temperature: float) -> None:
    """Fold a logits block (r, c) into the running lse (r,) in place."""
    if z.shape[0]:
        _block_lse_kernel[(z.shape[0],)](z, z.stride(0), z if b is None else b, lse, z.shape[1],
                                         temperature, HAS_BIAS=b is not None,
                                         BLOCK_V=_block_v(z.shape[1]), ACC=_acc(lse.dtype),
                                         num_warps=NUM_WARPS, enable_fp_fusion=FP_FUSION)


def _block_grad(z: Tensor, b: Tensor | None, lse: Tensor, go: Tensor,
                temperature: float) -> Tensor:
    """Overwrite a logits block with its gradient -go/T * softmax(z/T) and return it."""
    block_v = _block_v(z.shape[1])
    if z.shape[0]:
        _block_grad_kernel[(z.shape[0], triton.cdiv(z.shape[1], block_v))](
            z, z.stride(0), z if b is None else b, lse, go, z.shape[1], temperature,
            HAS_BIAS=b is not None, BLOCK_V=block_v, ACC=_acc(lse.dtype), num_warps=NUM_WARPS,
            enable_fp_fusion=FP_FUSION)
    return z


def _row_blocks(k: int, hidden_size: int) -> tuple[int, int]:
    block_k = max(2, triton.next_power_of_2(k))
    return block_k, min(triton.next_power_of_2(hidden_size), max(16, 2048 // block_k))


def _segments(keys: Tensor, limit: int) -> tuple[Tensor, Tensor, Tensor]:
    """Stable sort of keys, and the runs of equal keys below limit: run s is
    order[bounds[s]:bounds[s + 1]]. Keys >= limit sort last and belong to no run. One host
    sync (nonzero): the runs' count sizes the grid."""
    keys, order = torch.sort(keys, stable=True)
    first = keys < limit
    first[1:] &= keys[1:] != keys[:-1]
    bounds = torch.cat([first.nonzero().squeeze(-1), (keys < limit).sum().view(1)])
    return keys, order, bounds  # the last run ends where the keys >= limit begin


def _inputs(hidden: Tensor, weight: Tensor, bias: Tensor | None, ids: Tensor,
            perturbed: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    h, ids2, y = flat(hidden, ids, perturbed)
    w = weight.contiguous()
    return h.contiguous(), w, w if bias is None else bias.contiguous(), ids2.contiguous(), \
        y.contiguous()


def _bias(bias: Tensor | None, b: Tensor) -> Tensor | None:
    return None if bias is None else b


def soft_logprob_from_hidden(hidden: Tensor, weight: Tensor, bias: Tensor | None, ids: Tensor,
                             perturbed: Tensor, temperature: float, clamp_lo: float,
                             clamp_hi: float, mask_threshold: float, eps: float, reduction: str,
                             likelihood: str, conditional_weight: float, noise_scale: float,
                             chunk_size: int) -> tuple[Tensor, Tensor]:
    dtype = compute_dtype(hidden, weight, perturbed)
    h, w, b, ids2, y = _inputs(hidden, weight, bias, ids, perturbed)
    n, k = ids2.shape
    out = torch.empty(n, dtype=dtype, device=h.device)
    block_k, block_h = _row_blocks(k, h.shape[1])
    if n:
        _soft_fwd_kernel[(n,)](h, w, b, ids2, y, out, k, h.shape[1], h.stride(0), w.stride(0),
                               temperature, clamp_lo, clamp_hi, mask_threshold, eps,
                               conditional_weight, noise_scale, HAS_BIAS=bias is not None,
                               LIKELIHOOD=LIKELIHOOD_CODES[likelihood],
                               MEAN=reduction == "mean", BLOCK_K=block_k, BLOCK_H=block_h,
                               ACC=_acc(dtype), num_warps=NUM_WARPS, enable_fp_fusion=FP_FUSION)
    out, lse = subtract_normalisers(out, h, w, _bias(bias, b), ids2, temperature, chunk_size,
                                    w.dtype, _block_lse)
    return out.reshape(ids.shape[:-1]), lse.reshape(ids.shape[:-1])


def soft_logprob_from_hidden_backward(grad: Tensor, hidden: Tensor, weight: Tensor,
                                      bias: Tensor | None, ids: Tensor, perturbed: Tensor,
                                      lse: Tensor, temperature: float, clamp_lo: float,
                                      clamp_hi: float, mask_threshold: float, eps: float,
                                      reduction: str, likelihood: str, conditional_weight: float,
                                      noise_scale: float, chunk_size: int
                                      ) -> tuple[Tensor, Tensor, Tensor]:
    dtype = compute_dtype(hidden, weight, perturbed)
    h, w, b, ids2, y = _inputs(hidden, weight, bias, ids, perturbed)
    n, k = ids2.shape
    go = grad.reshape(-1).to(dtype).contiguous()
    # grad_w stays in weight's dtype: no (V, H) fp32 copy; each row is rounded once or twice
    grad_h, grad_w, grad_b = normaliser_backward(go, h, w, _bias(bias, b), ids2, lse.reshape(-1).to(dtype),
                                                 temperature, chunk_size, w.dtype, dtype,
                                                 w.dtype, _block_grad)
    if n == 0:
        return cast_grads(grad_h, grad_w, grad_b, hidden, weight, bias)
    coef = torch.empty((n, k), dtype=dtype, device=h.device)
    block_k, block_h = _row_blocks(k, h.shape[1])
    acc = _acc(dtype)
    _soft_bwd_kernel[(n,)](go, h, w, b, ids2, y, grad_h, coef, k, h.shape[1], h.stride(0),
                           w.stride(0), grad_h.stride(0), temperature, clamp_lo, clamp_hi,
                           mask_threshold, eps, conditional_weight, noise_scale,
                           HAS_BIAS=bias is not None, LIKELIHOOD=LIKELIHOOD_CODES[likelihood],
                           MEAN=reduction == "mean", BLOCK_K=block_k, BLOCK_H=block_h, ACC=acc,
                           num_warps=NUM_WARPS, enable_fp_fusion=FP_FUSION)
    _scatter_head_rows(coef, h, ids2, ~is_discrete(ids2), grad_w, grad_b, grad_h, acc)
    return cast_grads(grad_h, grad_w, grad_b, hidden, weight, bias)


def _scatter_head_rows(coef: Tensor, h: Tensor, ids2: Tensor, wide: Tensor, grad_w: Tensor,
                       grad_b: Tensor | None, grad_h: Tensor, acc) -> None:
    """grad_w[id] (and grad_b[id]) += the coefficients (N, M) times h of the entries with that
    id, without float atomics; slots >= 1 of the rows not ``wide`` carry nothing."""
    m = ids2.shape[1]
    vocab = grad_w.shape[0]
    # skipped slots carry no gradient: key V sorts them last, in no segment
    padding = ~wide[:, None] & (torch.arange(m, device=h.device) >= 1)
    keys, order, bounds = _segments(torch.where(padding, vocab, ids2).reshape(-1), vocab)
    block_h = min(128, triton.next_power_of_2(h.shape[1]))
    _scatter_rows_kernel[(bounds.numel() - 1, triton.cdiv(h.shape[1], block_h))](
        keys, order, bounds, coef, h, grad_w, grad_h if grad_b is None else grad_b, m,
        h.shape[1], h.stride(0), grad_w.stride(0), HAS_BIAS=grad_b is not None, BLOCK_P=16,
        BLOCK_H=block_h, ACC=acc, num_warps=NUM_WARPS, enable_fp_fusion=FP_FUSION)


def _multiplex_inputs(hidden: Tensor, weight: Tensor, bias: Tensor | None, ids: Tensor,
                      perturbed: Tensor, kept: Tensor):
    """(compute dtype, h, w, b, the records' layout, block_k, block_h) of the multiplex
    launchers."""
    h, w, b, _, _ = _inputs(hidden, weight, bias, ids, perturbed)
    lay = mlp.layout(ids, perturbed, kept)
    return (compute_dtype(hidden, weight, perturbed), h, w, b, lay,
            *_row_blocks(lay.cols.shape[1], h.shape[1]))


def multiplex_logprob_from_hidden(hidden: Tensor, weight: Tensor, bias: Tensor | None,
                                  ids: Tensor, perturbed: Tensor, kept: Tensor,
                                  temperature: float, chunk_size: int
                                  ) -> tuple[Tensor, Tensor, Tensor]:
    """softgrpo.reference.multiplex_logprob_from_hidden with the gathered logits and the
    full-vocabulary normaliser's blocks in Triton; the per-row arithmetic on (N, K + W)
    values is the reference's."""
    dtype, h, w, b, lay, block_k, block_h = _multiplex_inputs(hidden, weight, bias, ids,
                                                              perturbed, kept)
    n, m = lay.cols.shape
    zk = torch.zeros((n, m), dtype=dtype, device=h.device)
    if n:
        _gather_fwd_kernel[(n,)](h, w, b, lay.cols, lay.wide.to(torch.uint8), zk, m,
                                 h.shape[1], h.stride(0), w.stride(0), temperature,
                                 HAS_BIAS=bias is not None, BLOCK_K=block_k, BLOCK_H=block_h,
                                 ACC=_acc(dtype), num_warps=NUM_WARPS,
                                 enable_fp_fusion=FP_FUSION)
    _, lse = subtract_normalisers(torch.zeros(n, dtype=dtype, device=h.device), h, w,
                                  _bias(bias, b), lay.cols, temperature, chunk_size, w.dtype,
                                  _block_lse, lay.full)
    return mlp.slot_logprobs(zk, lse, lay).reshape(ids.shape), lse, zk


def multiplex_logprob_from_hidden_backward(grad: Tensor, hidden: Tensor, weight: Tensor,
                                           bias: Tensor | None, ids: Tensor, perturbed: Tensor,
                                           kept: Tensor, lse: Tensor, zk: Tensor,
                                           temperature: float, chunk_size: int
                                           ) -> tuple[Tensor, Tensor, Tensor]:
    dtype, h, w, b, lay, block_k, block_h = _multiplex_inputs(hidden, weight, bias, ids,
                                                              perturbed, kept)
    n, m = lay.cols.shape
    coef, go = mlp.slot_coefficients(grad.to(dtype), zk, lay, temperature)
    coef = coef.contiguous()
    grad_h, grad_w, grad_b = normaliser_backward(go, h, w, _bias(bias, b), lay.cols,
                                                 lse.to(dtype), temperature, chunk_size,
                                                 w.dtype, dtype, w.dtype, _block_grad, lay.full)
    if n:
        _gather_bwd_kernel[(n,)](coef, w, lay.cols, lay.wide.to(torch.uint8), grad_h, m,
                                 h.shape[1], w.stride(0), grad_h.stride(0), BLOCK_K=block_k,
                                 BLOCK_H=block_h, ACC=_acc(dtype), num_warps=NUM_WARPS,
                                 enable_fp_fusion=FP_FUSION)
        _scatter_head_rows(coef, h, lay.cols, lay.wide, grad_w, grad_b, grad_h, _acc(dtype))
    return cast_grads(grad_h, grad_w, grad_b, hidden, weight, bias)
