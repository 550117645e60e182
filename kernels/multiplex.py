"""Triton kernels of multiplex_sample, one Multiplex Thinking rollout step
(softgrpo/reference/multiplex.py is the spec; ids and kept sets match it bit for bit).

Design: two stages, each logits row read once, in its own dtype.
- With a top-k filter: stage 1 is soft_sample's scan (kernels/sampling.py _chunk_kernel: the
  streaming top-KMAX merge on packed (value, id) keys and the online softmax normaliser, one
  program per (row, vocabulary chunk)). Stage 2, one program per row (_kept_kernel), merges
  the chunks (merge_keys), sorts the set, applies top-p on the full-vocabulary mass
  exp(z - lse) (nucleus, the release's "joint" order), and makes the K draws over the kept
  slots: Gumbel-max of z + g_j(id) with Philox stream j of (seed, offset, id).
- Without a filter (the release's default): the draws are Gumbel-max over the whole row, so
  stage 1 (_draws_chunk_kernel) scores every token of its chunk for every stream while it
  accumulates the normaliser: one Philox evaluation gives the noise of four streams. A block
  whose maximum lies more than GUMBEL_SPREAD below the chunk's running maximum cannot hold a
  winner (the noise is bounded) and is skipped without noise. Stage 2 (_draws_merge_kernel)
  takes each stream's best over the chunks (ties to the smaller id: chunks are in id order)
  and reads the K winners' logits for their log-probs z - lse.
- Chunks per row as soft_sample (_n_chunks); every launch sets num_warps, enable_fp_fusion
  (off: z = logits / T and the scores must round as on the CPU) and maxnreg.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from softgrpo.kernels.embedding import block_k
from softgrpo.kernels.sampling import (
    MAX_KMAX,
    MERGE_CHUNKS,
    NUM_WARPS_SCAN,
    _accumulate,
    _chunk_kernel,
    _launch_options,
    _load,
    _unpack,
    gumbel_of,
    merge_keys,
    merge_normalisers,
    nucleus,
    scan_layout,
)
from softgrpo.reference.multiplex import GUMBEL_SPREAD

_BIG_ID = tl.constexpr(2**62)  # above every token id: "no winner yet"
# tokens per block of the unfiltered scan: four Philox words per token and stream group make
# it compute-bound, so a small block (4 tokens per thread at 8 warps) keeps it in registers
DRAWS_BLOCK = 1024


@triton.jit
def _stream_noise(seed, offset, ids, group):
    """The four Philox words of counter (ids, offset, group, 0): streams 4 * group + r."""
    c0 = ids.to(tl.uint32)
    c1 = (tl.zeros_like(ids) + offset).to(tl.uint32)
    c2 = (tl.zeros_like(ids) + group).to(tl.uint32)
    return tl.philox(seed, c0, c1, c2, tl.zeros_like(c0))


@triton.jit
def _best(score, ids):
    """Largest score of a block and its smallest id among ties."""
    top = tl.max(score, axis=0)
    return top, tl.min(tl.where(score == top, ids, _BIG_ID), axis=0)


@triton.jit
def _take(best, best_id, slot, j, top, top_id):
    """Stream j's running (best, id) replaced where the block's top beats it (strictly: an
    earlier block holds the smaller ids, so it keeps a tie)."""
    old = tl.max(tl.where(slot == j, best, float("-inf")), axis=0)
    win = (slot == j) & (tl.zeros_like(best) + top > old)  # a vector: the interpreter's & wants one
    return tl.where(win, top, best), tl.where(win, top_id, best_id)


@triton.jit
def _weights(logprob, slot, k, UNIFORM: tl.constexpr):
    """p_hat(ids) renormalised over the k slots, or 1/k."""
    live = slot < k
    if UNIFORM:
        return tl.where(live, 1.0, 0.0) / k
    x = tl.where(live, logprob, float("-inf"))
    e = tl.exp(x - tl.max(x, axis=0))
    return tl.math.div_rn(e, tl.sum(e, axis=0))


@triton.jit(do_not_specialize=["n_chunks", "k", "top_k"])
def _kept_kernel(keys_ptr, max_ptr, sum_ptr, n_chunks, seed_ptr, offset_ptr, ids_ptr,
                 logprob_ptr, weights_ptr, kept_ptr, lse_ptr, k, top_k, top_p,
                 KMAX: tl.constexpr, KB: tl.constexpr, CHUNKS: tl.constexpr,
                 UNIFORM: tl.constexpr):
    """Stage 2 with a top-k filter: one program per row."""
    row = tl.program_id(0)
    keys, lse = merge_keys(keys_ptr, max_ptr, sum_ptr, n_chunks, row, KMAX, CHUNKS)
    vals, ids = _unpack(tl.sort(keys, descending=True))
    slot = tl.arange(0, KMAX)
    p = nucleus(tl.exp(vals - lse), top_k, top_p, KMAX)  # top-p on the full-vocabulary mass
    kept = p > 0.0
    z = tl.where(kept, vals, float("-inf"))
    top = tl.max(z, axis=0)
    norm = top + tl.log(tl.sum(tl.exp(z - top), axis=0))  # the filtered distribution's
    seed = tl.load(seed_ptr + row)
    offset = tl.load(offset_ptr + row)
    draw = tl.arange(0, KB)
    best = tl.full([KB], float("-inf"), tl.float32)
    best_id = tl.full([KB], -1, tl.int64)
    for group in range(tl.cdiv(k, 4)):
        words = _stream_noise(seed, offset, ids, group)
        for r in tl.static_range(4):
            top_j, id_j = _best(z + gumbel_of(words[r]), ids)
            best, best_id = _take(best, best_id, draw, 4 * group + r, top_j, id_j)
    # a draw's log-prob: its z (unique among the kept ids) minus the filtered normaliser
    hit = best_id[:, None] == ids[None, :]
    logprob = tl.sum(tl.where(hit, z[None, :], 0.0), axis=1) - norm
    out = row.to(tl.int64) * k + draw
    live = draw < k
    tl.store(ids_ptr + out, best_id, mask=live)
    tl.store(logprob_ptr + out, logprob, mask=live)
    tl.store(weights_ptr + out, _weights(logprob, draw, k, UNIFORM), mask=live)
    tl.store(kept_ptr + row.to(tl.int64) * top_k + slot, tl.where(kept, ids, -1),
             mask=slot < top_k)
    tl.store(lse_ptr + row, lse)


@triton.jit(do_not_specialize=["n_chunks", "k"])
def _draws_chunk_kernel(logits_ptr, stride_b, V, chunk, n_chunks, temperature, seed_ptr,
                        offset_ptr, best_ptr, best_id_ptr, max_ptr, sum_ptr, k, spread,
                        KB: tl.constexpr, BLOCK: tl.constexpr, DIVIDE: tl.constexpr):
    """Stage 1 without a filter: one program per (row, chunk) writes each stream's best score
    and id over the chunk, and the chunk's max and sum of exp."""
    pid = tl.program_id(0)
    row = pid // n_chunks
    lo = (pid % n_chunks) * chunk
    hi = tl.minimum(lo + chunk, V)
    row_ptr = logits_ptr + row.to(tl.int64) * stride_b
    seed = tl.load(seed_ptr + row)
    offset = tl.load(offset_ptr + row)
    draw = tl.arange(0, KB)
    best = tl.full([KB], float("-inf"), tl.float32)
    best_id = tl.full([KB], _BIG_ID, tl.int64)
    m = tl.full([], float("-inf"), tl.float32)
    s = tl.full([], 0.0, tl.float32)
    for start in range(lo, hi, BLOCK):
        z, offs, _ = _load(row_ptr, start, hi, temperature, BLOCK, DIVIDE)
        block_max = tl.max(z, axis=0)
        reachable = block_max >= m - spread  # else no token of the block can win a draw
        m, s = _accumulate(m, s, block_max, z, 1.0)
        if reachable:
            ids = offs.to(tl.int64)
            for group in range(tl.cdiv(k, 4)):
                words = _stream_noise(seed, offset, ids, group)
                for r in tl.static_range(4):
                    top_j, id_j = _best(z + gumbel_of(words[r]), ids)
                    best, best_id = _take(best, best_id, draw, 4 * group + r, top_j, id_j)
    tl.store(best_ptr + pid.to(tl.int64) * KB + draw, best)
    tl.store(best_id_ptr + pid.to(tl.int64) * KB + draw, best_id)
    tl.store(max_ptr + pid, m)
    tl.store(sum_ptr + pid, s)


@triton.jit(do_not_specialize=["n_chunks", "k"])
def _draws_merge_kernel(logits_ptr, stride_b, temperature, best_ptr, best_id_ptr, max_ptr,
                        sum_ptr, n_chunks, ids_ptr, logprob_ptr, weights_ptr, lse_ptr, k,
                        KB: tl.constexpr, CHUNKS: tl.constexpr, DIVIDE: tl.constexpr,
                        UNIFORM: tl.constexpr):
    """Stage 2 without a filter: one program per row."""
    row = tl.program_id(0)
    base = row.to(tl.int64) * n_chunks
    draw = tl.arange(0, KB)
    best = tl.full([KB], float("-inf"), tl.float32)
    best_id = tl.full([KB], _BIG_ID, tl.int64)
    for start in range(0, n_chunks, CHUNKS):
        chunk = start + tl.arange(0, CHUNKS)
        at = (base + chunk)[:, None] * KB + draw[None, :]
        live = (chunk < n_chunks)[:, None]
        score = tl.load(best_ptr + at, mask=live, other=float("-inf"))
        ids = tl.load(best_id_ptr + at, mask=live, other=_BIG_ID)
        top = tl.max(score, axis=0)
        top_id = tl.min(tl.where(score == top[None, :], ids, _BIG_ID), axis=0)
        win = top > best  # an earlier chunk holds the smaller ids: it keeps a tie
        best, best_id = tl.where(win, top, best), tl.where(win, top_id, best_id)
    lse = merge_normalisers(max_ptr, sum_ptr, n_chunks, row, CHUNKS)
    live = draw < k
    found = live & (best_id < _BIG_ID)  # none only in a row of -inf (the caller raises)
    z = tl.load(logits_ptr + row.to(tl.int64) * stride_b + best_id, mask=found,
                other=0.0).to(tl.float32)
    if DIVIDE:
        z = tl.math.div_rn(z, temperature)
    logprob = z - lse
    out = row.to(tl.int64) * k + draw
    tl.store(ids_ptr + out, best_id, mask=live)
    tl.store(logprob_ptr + out, logprob, mask=live)
    tl.store(weights_ptr + out, _weights(logprob, draw, k, UNIFORM), mask=live)
    tl.store(lse_ptr + row, lse)


def multiplex_sample(logits: torch.Tensor, k: int, temperature: float, top_k: int,
                     top_p: float, uniform_weights: bool, seed: torch.Tensor,
                     offset: torch.Tensor, *, block_v: int | None = None,
                     n_chunks: int | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                torch.Tensor]:
    """Launcher of softgrpo.reference.multiplex_sample's kernels, with its arguments (checked
    by softgrpo.ops.multiplex.multiplex_sample).

    logits (B, V) fp32/bf16/fp16, any row stride. seed, offset (B,) int64.
    Returns ids (B, k) int64, logprob and weights (B, k) fp32, kept (B, top_k) int64 as the
    reference, and lse (B,) fp32, the logsumexp of the row of logits / T (NaN for a row with
    a NaN, -inf for a row of -inf: the caller's data check).
    block_v, n_chunks: override the streamed block (a power of two) and the chunks per row
    (tests use them to run several blocks and chunks on small V).
    Raises ValueError when top_k > MAX_KMAX.
    """
    rows, vocab = logits.shape
    kmax = block_k(max(top_k, 1))
    if kmax > MAX_KMAX:
        raise ValueError(f"top_k must be <= {MAX_KMAX} on CUDA, got {top_k}")
    logits, block, programs, chunks, chunk = scan_layout(logits, kmax, block_v, n_chunks)
    kb = triton.next_power_of_2(k)
    device = logits.device
    seed, offset = seed.to(torch.int64).contiguous(), offset.to(torch.int64).contiguous()
    ids = torch.empty((rows, k), dtype=torch.int64, device=device)
    logprob = torch.empty((rows, k), dtype=torch.float32, device=device)
    weights = torch.empty_like(logprob)
    kept = torch.empty((rows, top_k), dtype=torch.int64, device=device)
    lse = torch.empty(rows, dtype=torch.float32, device=device)
    part_max = torch.empty((rows, chunks), dtype=torch.float32, device=device)
    part_sum = torch.empty_like(part_max)
    scan = _launch_options(NUM_WARPS_SCAN, programs)
    divide = temperature != 1.0  # x / 1 == x: skip the division
    merge = dict(CHUNKS=min(MERGE_CHUNKS, triton.next_power_of_2(chunks)), UNIFORM=uniform_weights)
    if top_k:
        keys = torch.empty((rows, chunks, kmax), dtype=torch.int64, device=device)
        _chunk_kernel[(rows * chunks,)](logits, logits.stride(0), vocab, chunk, chunks,
                                        temperature, keys, part_max, part_sum, KMAX=kmax,
                                        BLOCK=block, DIVIDE=divide, **scan)
        _kept_kernel[(rows,)](keys, part_max, part_sum, chunks, seed, offset, ids, logprob,
                              weights, kept, lse, k, top_k, top_p, KMAX=kmax, KB=kb, **merge,
                              **_launch_options(min(16, max(4, kmax // 8)), 1))
        return ids, logprob, weights, kept, lse
    # the scan's chunks keep the top-k path's boundaries; its block is smaller (DRAWS_BLOCK)
    draws_block = min(block, block_v or DRAWS_BLOCK)
    best = torch.empty((rows, chunks, kb), dtype=torch.float32, device=device)
    best_id = torch.empty((rows, chunks, kb), dtype=torch.int64, device=device)
    _draws_chunk_kernel[(rows * chunks,)](logits, logits.stride(0), vocab, chunk, chunks,
                                          temperature, seed, offset, best, best_id, part_max,
                                          part_sum, k, GUMBEL_SPREAD, KB=kb, BLOCK=draws_block,
                                          DIVIDE=divide, **scan)
    _draws_merge_kernel[(rows,)](logits, logits.stride(0), temperature, best, best_id, part_max,
                                 part_sum, chunks, ids, logprob, weights, lse, k, KB=kb,
                                 DIVIDE=divide, **merge, **_launch_options(4, 1))
    return ids, logprob, weights, kept, lse
