"""Triton kernels of soft_logprob (softgrpo/reference/logprob.py is the spec).

Design, one program per row (leading dims flattened, logits rows may have any row stride):
- Soft row: gathers only its K logits; lp = log(softmax(z[ids kept] / T) + eps) over the kept
  (finite-y) slots, the full-vocabulary normaliser cancels, then the row's likelihood
  (LIKELIHOOD constexpr: release, exact or token; soft_row / soft_row_grad, shared with the
  fused LM-head kernels).
- Discrete row (all(ids[..., 1:] == 0)): one online log-sum-exp pass over the vocabulary in
  BLOCK_V chunks. Not split across programs: with many discrete rows (prompts, answers) the
  rows already fill the GPU; with a handful, one program streams a V=151936 row in tens of
  microseconds, and a split would cost a second launch and a combine step for that.
- Backward allocates nothing but grad_logits (torch.empty, no memset followed by a second
  pass): a soft row streams zeros over its row, then writes its K entries; a discrete row
  recomputes its log-sum-exp and writes (onehot - softmax) * grad / T. The dense N x V
  output is the cost floor of this op's backward (one write of the logits' size).
- Computes in fp32 from fp32/bf16/fp16 logits. fp64 inputs (gradcheck) run the reference
  instead: Triton passes the scalars (temperature, eps, bounds) as fp32, so an fp64 kernel
  could not reproduce the fp64 reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from softgrpo import reference as ref
from softgrpo.kernels.embedding import block_k, discrete_row, rows_2d
from softgrpo.reference.common import compute_dtype

BLOCK_V = 4096  # vocabulary chunk of the log-sum-exp and gradient passes (8 warps)
NUM_WARPS = 8
# FMA contraction on, set at every launch (Triton 3.9 warns that its default changes in 3.10):
# the log-probs are compared with the reference to a tolerance, and a fused multiply-add rounds
# once where a multiply and an add round twice. The fused LM-head kernels use the same.
FP_FUSION = True


@triton.jit
def _record_row(z_row, ids_ptr, y_ptr, row, K, temperature, BLOCK_K: tl.constexpr):
    """A row's ids (int64), perturbed y and K temperature-scaled logits z[ids] / T (fp32)."""
    offs_k = tl.arange(0, BLOCK_K)
    mask_k = offs_k < K
    ids = tl.load(ids_ptr + row * K + offs_k, mask=mask_k, other=0).to(tl.int64)
    y = tl.load(y_ptr + row * K + offs_k, mask=mask_k, other=0.0).to(tl.float32)
    zk = tl.load(z_row + ids, mask=mask_k, other=0.0).to(tl.float32) / temperature
    return ids, y, zk, offs_k, mask_k


LIKELIHOOD_CODES = {"release": 0, "exact": 1, "token": 2}  # the kernels' LIKELIHOOD constexpr


@triton.jit
def _slot_terms(zk, y, mask_k, eps):
    """Per-slot pieces of a soft row (as reference _slot_terms): kept (finite y: a slot cut by
    top-p holds -inf), s = softmax over the kept logits, lp = log(s + eps), y - lp (0 if cut)."""
    kept = mask_k & (y > float("-inf"))
    x = tl.where(kept, zk, float("-inf"))  # cut and padding lanes drop out of the softmax
    e = tl.exp(x - tl.max(x, axis=0))  # max-shifted softmax over the kept logits only
    s = e / tl.sum(e, axis=0)
    lp = tl.log(s + eps)
    return kept, s, lp, tl.where(kept, y - lp, 0.0)


@triton.jit
def _token_terms(lp, kept, offs_k, scale):
    """log P(token) = softmax(lp / c)[0] over the kept slots (the Gumbel-max law) and the
    softmax itself."""
    x = tl.where(kept, lp / scale, float("-inf"))
    m = tl.max(x, axis=0)
    lse = m + tl.log(tl.sum(tl.exp(x - m), axis=0))
    return tl.sum(tl.where(offs_k == 0, x, 0.0), axis=0) - lse, tl.exp(x - lse)


@triton.jit
def soft_row(zk, y, mask_k, offs_k, clamp_lo, clamp_hi, mask_threshold, eps, weight, scale,
             LIKELIHOOD: tl.constexpr, MEAN: tl.constexpr):
    """A soft row's log-prob from its K temperature-scaled logits (reference soft_rows)."""
    kept, _, lp, raw = _slot_terms(zk, y, mask_k, eps)
    if LIKELIHOOD == 0:  # release: clamped recovered noise, masked mean (or sum)
        g = tl.minimum(tl.maximum(raw, clamp_lo), clamp_hi)
        masked = kept & (lp > mask_threshold)  # taken on the current policy, not differentiated
        out = tl.sum(tl.where(masked, -g - tl.exp(-g), 0.0), axis=0)  # Gumbel(0, 1) log-density
        if MEAN:
            out = out / tl.sum(masked.to(out.dtype), axis=0)
    else:  # exact: joint density of y = lp + c g over the kept slots; token: mixed with it
        g = raw / scale
        log_c = tl.log(tl.zeros_like(lp) + scale)  # in lp's dtype (fp64 in gradcheck runs)
        out = tl.sum(tl.where(kept, -g - tl.exp(-g) - log_c, 0.0), axis=0)
        if LIKELIHOOD == 2:
            token, _ = _token_terms(lp, kept, offs_k, scale)
            out = (1.0 - weight) * token + weight * out
    return out


@triton.jit
def soft_row_grad(zk, y, mask_k, offs_k, go, temperature, clamp_lo, clamp_hi, mask_threshold,
                  eps, weight, scale, LIKELIHOOD: tl.constexpr, MEAN: tl.constexpr):
    """Gradient of go * soft_row w.r.t. the K logits before temperature scaling (reference
    soft_rows_backward); 0 at cut and padding lanes."""
    kept, s, lp, raw = _slot_terms(zk, y, mask_k, eps)
    if LIKELIHOOD == 0:
        g = tl.minimum(tl.maximum(raw, clamp_lo), clamp_hi)
        masked = kept & (lp > mask_threshold)
        inside = (raw >= clamp_lo) & (raw <= clamp_hi)
        coef = go
        if MEAN:
            coef = go / tl.sum(masked.to(lp.dtype), axis=0)
        # d density / d lp = 1 - exp(-g), inside the clamp and on masked-in slots only
        d_lp = tl.where(masked & inside, coef * (1.0 - tl.exp(-g)), 0.0)
    else:
        d_lp = tl.where(kept, (1.0 - tl.exp(-raw / scale)) / scale, 0.0)
        if LIKELIHOOD == 2:
            _, p_token = _token_terms(lp, kept, offs_k, scale)
            d_token = ((offs_k == 0).to(lp.dtype) - p_token) / scale
            d_lp = (1.0 - weight) * d_token + weight * d_lp
        d_lp = go * d_lp
    r = d_lp * (s / (s + eps))  # through lp = log(s + eps), times s: no 1 / eps blow-up
    return (r - s * tl.sum(r, axis=0)) / temperature  # softmax VJP, then 1 / T


@triton.jit
def _row_lse(z_row, V, temperature, BLOCK_V: tl.constexpr):
    """log-sum-exp of z_row[:V] / T in one online pass (fp32)."""
    m = -3.0e38  # finite start: an all -inf chunk rescales by exp(0) * 0, not exp(nan)
    d = 0.0
    for v0 in range(0, V, BLOCK_V):
        offs = v0 + tl.arange(0, BLOCK_V)
        x = tl.load(z_row + offs, mask=offs < V, other=float("-inf")).to(tl.float32)
        x = x / temperature
        m_new = tl.maximum(m, tl.max(x, axis=0))
        d = d * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)  # rescale the old sum
        m = m_new
    return m + tl.log(d)


@triton.jit
def _logprob_kernel(z_ptr, stride_z, ids_ptr, y_ptr, out_ptr, V, temperature, clamp_lo,
                    clamp_hi, mask_threshold, eps, weight, scale, K, BLOCK_K: tl.constexpr,
                    BLOCK_V: tl.constexpr, LIKELIHOOD: tl.constexpr, MEAN: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    z_row = z_ptr + row * stride_z
    ids, y, zk, offs_k, mask_k = _record_row(z_row, ids_ptr, y_ptr, row, K, temperature,
                                             BLOCK_K)
    if discrete_row(ids, offs_k):
        out = tl.sum(tl.where(offs_k == 0, zk, 0.0), axis=0) - _row_lse(z_row, V, temperature,
                                                                         BLOCK_V)
    else:
        out = soft_row(zk, y, mask_k, offs_k, clamp_lo, clamp_hi, mask_threshold, eps, weight,
                       scale, LIKELIHOOD, MEAN)
    tl.store(out_ptr + row, out)


@triton.jit
def _logprob_bwd_kernel(grad_ptr, z_ptr, stride_z, ids_ptr, y_ptr, dz_ptr, V, temperature,
                        clamp_lo, clamp_hi, mask_threshold, eps, weight, scale, K,
                        BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr,
                        LIKELIHOOD: tl.constexpr, MEAN: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    z_row = z_ptr + row * stride_z
    dz_row = dz_ptr + row * V
    go = tl.load(grad_ptr + row).to(tl.float32)
    ids, y, zk, offs_k, mask_k = _record_row(z_row, ids_ptr, y_ptr, row, K, temperature,
                                             BLOCK_K)
    if discrete_row(ids, offs_k):
        lse = _row_lse(z_row, V, temperature, BLOCK_V)
        label = tl.sum(tl.where(offs_k == 0, ids, 0), axis=0)
        scale = go / temperature
        for v0 in range(0, V, BLOCK_V):
            offs = v0 + tl.arange(0, BLOCK_V)
            x = tl.load(z_row + offs, mask=offs < V, other=float("-inf")).to(tl.float32)
            d = (tl.where(offs == label, 1.0, 0.0) - tl.exp(x / temperature - lse)) * scale
            tl.store(dz_row + offs, d.to(dz_ptr.dtype.element_ty), mask=offs < V)
    else:
        d_zk = soft_row_grad(zk, y, mask_k, offs_k, go, temperature, clamp_lo, clamp_hi,
                             mask_threshold, eps, weight, scale, LIKELIHOOD, MEAN)
        # equal ids in a row share one entry: every one of them stores the sum of their terms
        same = (ids[:, None] == ids[None, :]) & mask_k[None, :]
        d_zk = tl.sum(tl.where(same, d_zk[None, :], 0.0), axis=1)
        for v0 in range(0, V, BLOCK_V):
            offs = v0 + tl.arange(0, BLOCK_V)
            tl.store(dz_row + offs, tl.zeros([BLOCK_V], dtype=dz_ptr.dtype.element_ty),
                     mask=offs < V)
        tl.debug_barrier()  # the K stores below land after all of this program's zeros
        tl.store(dz_row + ids, d_zk.to(dz_ptr.dtype.element_ty), mask=mask_k)


# ---- launchers (same signatures, results and dtypes as softgrpo.reference.logprob) ---------
def _launch(kernel, out: torch.Tensor, extra: tuple, logits: torch.Tensor, ids: torch.Tensor,
            perturbed: torch.Tensor, temperature: float, clamp_lo: float, clamp_hi: float,
            mask_threshold: float, eps: float, reduction: str, likelihood: str,
            conditional_weight: float, noise_scale: float) -> None:
    k, v = ids.shape[-1], logits.shape[-1]
    z = rows_2d(logits, v)
    if z.shape[0]:
        kernel[(z.shape[0],)](*extra, z, z.stride(0), ids.reshape(-1, k).contiguous(),
                              perturbed.reshape(-1, k).contiguous(), out, v, temperature,
                              clamp_lo, clamp_hi, mask_threshold, eps, conditional_weight,
                              noise_scale, k, BLOCK_K=block_k(k),
                              BLOCK_V=min(BLOCK_V, triton.next_power_of_2(v)),
                              LIKELIHOOD=LIKELIHOOD_CODES[likelihood], MEAN=reduction == "mean",
                              num_warps=NUM_WARPS, enable_fp_fusion=FP_FUSION)


def soft_logprob(logits: torch.Tensor, ids: torch.Tensor, perturbed: torch.Tensor,
                 *options) -> torch.Tensor:
    args = (logits, ids, perturbed, *options)
    if compute_dtype(logits, perturbed) == torch.float64:
        return ref.soft_logprob(*args)
    out = torch.empty(ids.shape[:-1], dtype=torch.float32, device=logits.device)
    _launch(_logprob_kernel, out, (), *args)
    return out


def soft_logprob_backward(grad: torch.Tensor, logits: torch.Tensor, ids: torch.Tensor,
                          perturbed: torch.Tensor, *options) -> torch.Tensor:
    args = (logits, ids, perturbed, *options)
    if compute_dtype(logits, perturbed) == torch.float64:
        return ref.soft_logprob_backward(grad, *args)
    grad_logits = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
    _launch(_logprob_bwd_kernel, grad_logits, (grad.reshape(-1).contiguous(),), *args)
    return grad_logits
