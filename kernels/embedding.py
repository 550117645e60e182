"""Triton kernels of the soft-embedding ops (softgrpo/reference/embedding.py is the spec).

Design:
- Forward: one program per (row, block of H) gathers the row's K table rows as one
  (K, BLOCK_H) tile and reduces it with the weights in fp32; output in the table's dtype.
  soft_token_embedding computes the weights softmax(perturbed / tau) inside the same program
  (discrete rows, all(ids[..., 1:] == 0), get the one-hot [1, 0, ...]).
- Backward, weights: one program per row takes the K dot products <grad_out, table[ids_j]>
  over all of H, then (fused op) the softmax VJP (zero for discrete rows).
- Backward, table: no float atomics. The (row, slot) pairs are sorted by token id on the
  host side (stable sort) and one program per (table row, block of H) reduces its segment of
  pairs in fp32 in a fixed order and writes the row once: deterministic, and rows no pair
  references are written as zeros (no separate memset).
- fp64 inputs (gradcheck) run the reference instead: Triton passes scalars such as tau as
  fp32, so an fp64 kernel could not reproduce the fp64 reference.
Leading batch dims (..., k) are flattened; ids may be int64 or int32; all offsets are int64.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from softgrpo import reference as ref
from softgrpo.reference.common import compute_dtype

BLOCK_H = 512  # H tile: divides 1536 / 3584 / 4096 hidden sizes, 4 warps of 4-element vectors
BLOCK_P = 4  # (row, slot) pairs reduced per step of a table-gradient segment
NUM_WARPS = 4
# FMA contraction on, set at every launch (Triton 3.9 warns that its default changes in 3.10):
# these sums are compared with the reference to a tolerance, and a fused multiply-add rounds
# once where a multiply and an add round twice.
FP_FUSION = True


def rows_2d(x: torch.Tensor, n_cols: int) -> torch.Tensor:
    """x as (rows, n_cols) with unit column stride; the row stride is passed to kernels."""
    x = x.reshape(-1, n_cols)
    return x if x.stride(-1) == 1 else x.contiguous()


def block_k(k: int) -> int:
    """Power-of-two tile width for the k slots (at least 2 to keep tiles 2-D friendly)."""
    return max(2, triton.next_power_of_2(k))


@triton.jit
def discrete_row(ids, offs_k):
    """True iff the row's ids are [s, 0, ..., 0] (padding lanes must hold id 0)."""
    return tl.sum(((offs_k > 0) & (ids != 0)).to(tl.int32), axis=0) == 0


@triton.jit
def _softmax_vjp(grad_w, w, tau):
    """Gradient w.r.t. p of w = softmax(p / tau), given the gradient grad_w w.r.t. w."""
    return w * (grad_w - tl.sum(grad_w * w, axis=0)) / tau


@triton.jit
def _gumbel_weights(p, mask_k, tau):
    """softmax(p / tau) over the valid lanes."""
    x = tl.where(mask_k, p / tau, float("-inf"))
    e = tl.exp(x - tl.max(x, axis=0))  # max-shifted softmax; padding lanes give exp(-inf) = 0
    return e / tl.sum(e, axis=0)


@triton.jit
def _row_slots(ids_ptr, vals_ptr, row, K, tau, BLOCK_K: tl.constexpr, FUSED: tl.constexpr):
    """A row's ids (int64), fp32 weights and discrete flag: vals are the weights, or (FUSED)
    the perturbed values, whose Gumbel-softmax (one-hot for discrete rows) they become."""
    offs_k = tl.arange(0, BLOCK_K)
    mask_k = offs_k < K
    ids = tl.load(ids_ptr + row * K + offs_k, mask=mask_k, other=0).to(tl.int64)
    w = tl.load(vals_ptr + row * K + offs_k, mask=mask_k, other=0.0).to(tl.float32)
    disc = discrete_row(ids, offs_k)
    if FUSED:
        w = tl.where(disc, (offs_k == 0).to(tl.float32), _gumbel_weights(w, mask_k, tau))
    return ids, w, disc, offs_k, mask_k


@triton.jit
def _weights_kernel(p_ptr, ids_ptr, w_ptr, tau, K, BLOCK_K: tl.constexpr, HAS_IDS: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K)
    mask_k = offs_k < K
    p = tl.load(p_ptr + row * K + offs_k, mask=mask_k, other=0.0).to(tl.float32)
    w = _gumbel_weights(p, mask_k, tau)
    if HAS_IDS:
        ids = tl.load(ids_ptr + row * K + offs_k, mask=mask_k, other=0)
        w = tl.where(discrete_row(ids, offs_k), (offs_k == 0).to(tl.float32), w)
    tl.store(w_ptr + row * K + offs_k, w, mask=mask_k)


@triton.jit
def _weights_bwd_kernel(g_ptr, w_ptr, ids_ptr, out_ptr, tau, K, BLOCK_K: tl.constexpr,
                        HAS_IDS: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K)
    mask_k = offs_k < K
    g = tl.load(g_ptr + row * K + offs_k, mask=mask_k, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + row * K + offs_k, mask=mask_k, other=0.0).to(tl.float32)
    out = _softmax_vjp(g, w, tau)
    if HAS_IDS:
        ids = tl.load(ids_ptr + row * K + offs_k, mask=mask_k, other=0)
        out = tl.where(discrete_row(ids, offs_k), 0.0, out)
    tl.store(out_ptr + row * K + offs_k, out, mask=mask_k)


@triton.jit
def _embed_kernel(table_ptr, stride_t, ids_ptr, vals_ptr, out_ptr, H, tau, K,
                  BLOCK_K: tl.constexpr, BLOCK_H: tl.constexpr, FUSED: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask_h = offs_h < H
    ids, w, _, _, mask_k = _row_slots(ids_ptr, vals_ptr, row, K, tau, BLOCK_K, FUSED)
    live = mask_k & (w != 0.0)  # zero-weight slots (discrete rows' padding) are not read
    rows = tl.load(table_ptr + ids[:, None] * stride_t + offs_h[None, :],
                   mask=live[:, None] & mask_h[None, :], other=0.0)
    out = tl.sum(w[:, None] * rows.to(tl.float32), axis=0)  # fp32 accumulation
    tl.store(out_ptr + row * H + offs_h, out.to(out_ptr.dtype.element_ty), mask=mask_h)


@triton.jit
def _embed_rows_bwd_kernel(grad_ptr, stride_g, table_ptr, stride_t, ids_ptr, vals_ptr,
                           gvals_ptr, w_ptr, H, tau, K, BLOCK_K: tl.constexpr,
                           BLOCK_H: tl.constexpr, FUSED: tl.constexpr):
    """Weight gradient of one row: <grad_out, table[ids_j]> for the K slots; FUSED: then the
    softmax VJP (gradient w.r.t. perturbed, zero for discrete rows), and the weights are
    stored to w_ptr for the table-gradient kernel."""
    row = tl.program_id(0).to(tl.int64)
    ids, w, disc, offs_k, mask_k = _row_slots(ids_ptr, vals_ptr, row, K, tau, BLOCK_K, FUSED)
    live = mask_k
    if FUSED:
        # a discrete row's one-hot weights have a zero VJP whatever the dots: skip reading them
        live = tl.where(disc, False, live)
    dots = tl.zeros([BLOCK_K], dtype=tl.float32)
    for h0 in range(0, H, BLOCK_H):
        offs_h = h0 + tl.arange(0, BLOCK_H)
        mask_h = offs_h < H
        g = tl.load(grad_ptr + row * stride_g + offs_h, mask=mask_h, other=0.0)
        rows = tl.load(table_ptr + ids[:, None] * stride_t + offs_h[None, :],
                       mask=live[:, None] & mask_h[None, :], other=0.0)
        dots += tl.sum(rows.to(tl.float32) * g.to(tl.float32)[None, :], axis=1)
    if FUSED:
        tl.store(w_ptr + row * K + offs_k, w, mask=mask_k)
        dots = _softmax_vjp(dots, w, tau)
    tl.store(gvals_ptr + row * K + offs_k, dots.to(gvals_ptr.dtype.element_ty), mask=mask_k)


@triton.jit
def _embed_table_bwd_kernel(grad_ptr, stride_g, order_ptr, starts_ptr, w_ptr, out_ptr, H, K,
                            BLOCK_P: tl.constexpr, BLOCK_H: tl.constexpr):
    """Row v of the table gradient: sum of w * grad_out[row] over the pairs (row, slot) whose
    id is v, i.e. order[starts[v]:starts[v + 1]]; written once, zeros for no pair."""
    v = tl.program_id(0).to(tl.int64)
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask_h = offs_h < H
    start = tl.load(starts_ptr + v)
    end = tl.load(starts_ptr + v + 1)
    acc = tl.zeros([BLOCK_H], dtype=tl.float32)
    for p0 in range(start, end, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        mask_p = offs_p < end
        pair = tl.load(order_ptr + offs_p, mask=mask_p, other=0)  # flat index row * K + slot
        w = tl.load(w_ptr + pair, mask=mask_p, other=0.0).to(tl.float32)
        g = tl.load(grad_ptr + (pair // K)[:, None] * stride_g + offs_h[None, :],
                    mask=mask_p[:, None] & mask_h[None, :], other=0.0)
        acc += tl.sum(w[:, None] * g.to(tl.float32), axis=0)  # fixed order: deterministic
    tl.store(out_ptr + v * H + offs_h, acc.to(out_ptr.dtype.element_ty), mask=mask_h)


# ---- launchers (same signatures, results and dtypes as softgrpo.reference.embedding) -------
def _block_h(h: int) -> int:
    return min(BLOCK_H, triton.next_power_of_2(h))


def gumbel_softmax_weights(perturbed: torch.Tensor, tau: float,
                           ids: torch.Tensor | None) -> torch.Tensor:
    if compute_dtype(perturbed) == torch.float64:
        return ref.gumbel_softmax_weights(perturbed, tau, ids)
    k = perturbed.shape[-1]
    p = perturbed.reshape(-1, k).contiguous()
    w = torch.empty(p.shape, dtype=torch.float32, device=p.device)
    ids2 = p if ids is None else ids.reshape(-1, k).contiguous()  # p: unused placeholder
    if p.shape[0]:
        _weights_kernel[(p.shape[0],)](p, ids2, w, tau, k, BLOCK_K=block_k(k),
                                       HAS_IDS=ids is not None, num_warps=1,
                                       enable_fp_fusion=FP_FUSION)
    return w.reshape(perturbed.shape)


def gumbel_softmax_weights_backward(grad: torch.Tensor, weights: torch.Tensor, tau: float,
                                    ids: torch.Tensor | None) -> torch.Tensor:
    if weights.dtype == torch.float64:
        return ref.gumbel_softmax_weights_backward(grad, weights, tau, ids)
    k = weights.shape[-1]
    g = grad.reshape(-1, k).contiguous()
    w = weights.reshape(-1, k).contiguous()
    out = torch.empty(w.shape, dtype=weights.dtype, device=w.device)
    ids2 = w if ids is None else ids.reshape(-1, k).contiguous()  # w: unused placeholder
    if w.shape[0]:
        _weights_bwd_kernel[(w.shape[0],)](g, w, ids2, out, tau, k, BLOCK_K=block_k(k),
                                           HAS_IDS=ids is not None, num_warps=1,
                                           enable_fp_fusion=FP_FUSION)
    return out.reshape(weights.shape)


def _embed(table: torch.Tensor, ids: torch.Tensor, vals: torch.Tensor, tau: float,
           fused: bool) -> torch.Tensor:
    k, h = ids.shape[-1], table.shape[-1]
    t = rows_2d(table, h)
    ids2 = ids.reshape(-1, k).contiguous()
    out = torch.empty((ids2.shape[0], h), dtype=table.dtype, device=table.device)
    bh = _block_h(h)
    if ids2.shape[0]:
        _embed_kernel[(ids2.shape[0], triton.cdiv(h, bh))](
            t, t.stride(0), ids2, vals.reshape(-1, k).contiguous(), out, h, tau, k,
            BLOCK_K=block_k(k), BLOCK_H=bh, FUSED=fused, num_warps=NUM_WARPS,
            enable_fp_fusion=FP_FUSION)
    return out.reshape(*ids.shape[:-1], h)


def _embed_backward(grad: torch.Tensor, table: torch.Tensor, ids: torch.Tensor,
                    vals: torch.Tensor, tau: float, fused: bool, grad_vals_dtype: torch.dtype
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    k, h = ids.shape[-1], table.shape[-1]
    t = rows_2d(table, h)
    g = rows_2d(grad, h)
    ids2 = ids.reshape(-1, k).contiguous()
    vals2 = vals.reshape(-1, k).contiguous()
    n, bh = ids2.shape[0], _block_h(h)
    grad_vals = torch.empty((n, k), dtype=grad_vals_dtype, device=table.device)
    # the weights of the table gradient: given, or (fused) stored by the rows kernel
    w = torch.empty((n, k), dtype=torch.float32, device=table.device) if fused else vals2
    if n:
        _embed_rows_bwd_kernel[(n,)](g, g.stride(0), t, t.stride(0), ids2, vals2, grad_vals, w,
                                     h, tau, k, BLOCK_K=block_k(k), BLOCK_H=bh, FUSED=fused,
                                     num_warps=NUM_WARPS, enable_fp_fusion=FP_FUSION)
    v = table.shape[0]
    # sort pairs by id; zero-weight pairs (discrete rows' padding slots, all on id 0) get the
    # key v, past every segment, so they cost nothing (their contribution is exactly 0)
    keys = torch.where(w.reshape(-1) == 0, v, ids2.reshape(-1).long())
    sorted_keys, order = torch.sort(keys, stable=True)  # stable: a fixed summation order
    starts = torch.searchsorted(sorted_keys, torch.arange(v + 1, device=keys.device),
                                out_int32=True)  # segment of id u: order[starts[u]:starts[u+1]]
    grad_table = torch.empty((v, h), dtype=table.dtype, device=table.device)
    _embed_table_bwd_kernel[(v, triton.cdiv(h, bh))](g, g.stride(0), order, starts, w,
                                                     grad_table, h, k, BLOCK_P=BLOCK_P,
                                                     BLOCK_H=bh, num_warps=NUM_WARPS,
                                                     enable_fp_fusion=FP_FUSION)
    return grad_table, grad_vals.reshape(ids.shape)


def soft_embedding(table: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    if compute_dtype(table, weights) == torch.float64:
        return ref.soft_embedding(table, ids, weights)
    return _embed(table, ids, weights, 1.0, fused=False)


def soft_embedding_backward(grad: torch.Tensor, table: torch.Tensor, ids: torch.Tensor,
                            weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if compute_dtype(table, weights) == torch.float64:
        return ref.soft_embedding_backward(grad, table, ids, weights)
    return _embed_backward(grad, table, ids, weights, 1.0, False, weights.dtype)


def soft_token_embedding(table: torch.Tensor, ids: torch.Tensor, perturbed: torch.Tensor,
                         tau: float) -> torch.Tensor:
    if compute_dtype(table, perturbed) == torch.float64:
        return ref.soft_token_embedding(table, ids, perturbed, tau)
    return _embed(table, ids, perturbed, tau, fused=True)


def soft_token_embedding_backward(grad: torch.Tensor, table: torch.Tensor, ids: torch.Tensor,
                                  perturbed: torch.Tensor, tau: float
                                  ) -> tuple[torch.Tensor, torch.Tensor]:
    if compute_dtype(table, perturbed) == torch.float64:
        return ref.soft_token_embedding_backward(grad, table, ids, perturbed, tau)
    return _embed_backward(grad, table, ids, perturbed, tau, True, perturbed.dtype)
