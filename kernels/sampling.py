"""Triton kernel of soft_sample, one soft-thinking rollout step (softgrpo/reference/sampling.py
is the spec; every output matches it, ids bit for bit).

Design:
- One pass over each logits row, read in its own dtype and upcast in registers: the softmax
  normaliser is kept online (running max, rescaled sum of exp) and the top-KMAX tokens
  (KMAX = next power of two >= max(k, discrete_k)) by a streaming merge: a block whose max
  does not beat the current KMAX-th best value costs nothing beyond the normaliser; otherwise
  its candidates are inserted one by one, best first, until none beats the KMAX-th best. The
  first block of a scan primes the set with the maxima of KMAX groups of its keys, so it
  needs at most KMAX - 1 inserts instead of at least KMAX (with B = 1 a chunk is two blocks:
  this fixed cost is most of its work). No sort of the vocabulary, nothing of size V written
  to memory.
- A (value, id) pair is one int64 key whose integer order is the top-k order (value
  descending, ties to the smaller id), so the merge needs only integer max/min reductions.
- Split rows: when B alone cannot fill the GPU, stage 1 runs one program per (row, vocab
  chunk) and writes the chunk's top-KMAX keys, max and sum of exp to a (B, n_chunks, ...)
  scratch; stage 2, one program per row, merges the chunks the same way, starting from chunk
  0's set. With one chunk (and KMAX <= FUSED_KMAX) a single fused kernel does both. Chunk
  count: _n_chunks.
- Per row, on the KMAX survivors only: sort them (a bitonic sort of the keys), filter
  (softmax, nucleus with ties kept together, renormalise; cut slots get y = -inf), Philox
  Gumbel noise keyed by token id (softgrpo/philox.py), perturbed log-probs, the slots' order
  by y (rank counting over a KMAX x KMAX fp32 tile, stable), Gumbel-softmax weights, the
  rollout log-prob; for discrete rows the Gumbel-max token and its full-vocabulary log-prob
  z[s] - lse.
- Fidelity to the CPU reference: every division IEEE-rounded (div_rn; a plain fp32 `/` is
  div.full, 2 ulp, on NVIDIA), so z = logits / T and the top-k are bit-exact; scalars as fp32
  as torch rounds them; the nucleus cumsum accumulated in fp64 like torch's CPU cumsum; FMA
  contraction off (FP_FUSION), since a fused l + c * g or cumsum step rounds differently from
  the CPU and can reorder slots or move the nucleus cut. exp is ex2.approx on NVIDIA:
  perturbed/weights/logprob agree to ~1e-6.
- Every launch sets num_warps, enable_fp_fusion and maxnreg (_launch_options):
  benchmarks/compile_check.py compiles each kernel through this launcher for sm_80 and sm_90
  and fails on a spill or on an option left to Triton's default.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from softgrpo.kernels.embedding import block_k, rows_2d

MAX_KMAX = 128  # _finish's KMAX x KMAX tile stays in registers (16 warps: no spill, 3.6 and 3.9)
FUSED_KMAX = 32  # above, the finish step's tile would cost the scan occupancy: always split
BLOCK_BYTES = 8192  # bytes of a row streamed per loop step and program (4096 bf16 / 2048 fp32)
NUM_WARPS_SCAN = 8  # with BLOCK_BYTES: 16-byte loads
# scan programs resident per SM: 3 x 256 threads x 80 registers <= 64K when the rows are
# 16-byte aligned; element-wise loads (_aligned false) need up to 128 registers: 2 programs
PROGRAMS_PER_SM = 3
MIN_BLOCKS_PER_CHUNK = 2  # a chunk streams at least this many blocks (amortises its merge)
MERGE_CHUNKS = 16  # chunks whose keys stage 2 merges per step
FP_FUSION = False  # no FMA contraction: the top-k and slot order must match the CPU bit for bit

_SENT = tl.constexpr(-(2**63))  # key below every real key: an empty top-k slot or lane


@triton.jit
def _pack(z, idx):
    """int64 key of (value z fp32, token idx): larger key = earlier in the top-k order."""
    z = tl.where(z == 0.0, 0.0, z)  # -0.0 == +0.0 as values: give both one key
    bits = z.to(tl.int32, bitcast=True)
    mono = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # IEEE order as signed-integer order
    # low word 2**31 - 1 - id: among equal values the smaller id gets the larger key
    return (mono.to(tl.int64) << 32) + (0x7FFFFFFF - idx).to(tl.int64)


@triton.jit
def _unpack(key):
    """(value fp32, token id int64) of keys made by _pack."""
    hi = key >> 32  # arithmetic shift: the signed order word
    mono = hi.to(tl.int32)
    bits = tl.where(mono < 0, mono ^ 0x7FFFFFFF, mono)  # inverse of _pack's order map
    return bits.to(tl.float32, bitcast=True), 0x7FFFFFFF - (key - (hi << 32))


@triton.jit
def _insert(topk, thr, key, KMAX: tl.constexpr):
    """Merge candidate keys into the unordered top-KMAX set topk whose smallest key is thr."""
    slot = tl.arange(0, KMAX)
    best = tl.max(key, axis=0)
    while best > thr:  # candidates leave best first, so the first loser ends the merge
        at = tl.min(tl.where(topk == thr, slot, KMAX), axis=0)  # one slot, even among sentinels
        topk = tl.where(slot == at, best, topk)
        thr = tl.min(topk, axis=0)
        key = tl.where(key == best, _SENT, key)  # keys are unique: removes exactly best
        best = tl.max(key, axis=0)
    return topk, thr


@triton.jit
def _accumulate(m, s, part_max, part_m, part_s):
    """Fold parts (max part_m, sum part_s of exp(x - part_m)) into a running (max m, sum s)."""
    m_new = tl.maximum(m, part_max)
    ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # all -inf so far: no (-inf) - (-inf)
    s = s * tl.exp(m - ref) + tl.sum(part_s * tl.exp(part_m - ref), axis=0)  # rescale old sum
    return m_new, s


@triton.jit
def _load(row_ptr, start, hi, temperature, BLOCK: tl.constexpr, DIVIDE: tl.constexpr):
    """z = row[start:start + BLOCK] / T in fp32 (-inf past hi), with its offsets and mask."""
    offs = start + tl.arange(0, BLOCK)
    mask = offs < hi
    z = tl.load(row_ptr + offs, mask=mask, other=float("-inf")).to(tl.float32)
    if DIVIDE:
        z = tl.math.div_rn(z, temperature)  # IEEE-rounded, as torch's CPU division
    return z, offs, mask


@triton.jit
def _prime(key, KMAX: tl.constexpr, BLOCK: tl.constexpr):
    """A first top-KMAX set from one block of keys, without KMAX insert passes: the largest
    key of each of KMAX groups. They are KMAX distinct keys, so their smallest is at most the
    block's KMAX-th largest and at most KMAX - 1 inserts of the rest follow.
    Returns the set, its smallest key, and the keys left to insert."""
    groups = tl.reshape(key, [KMAX, BLOCK // KMAX])
    topk = tl.max(groups, axis=1)
    rest = tl.where(groups == topk[:, None], _SENT, groups)  # keys are unique: the maxima only
    return topk, tl.min(topk, axis=0), tl.reshape(rest, [BLOCK])


@triton.jit
def _scan(row_ptr, lo, hi, temperature, KMAX: tl.constexpr, BLOCK: tl.constexpr,
          DIVIDE: tl.constexpr):
    """Top-KMAX keys, max and sum of exp(z - max) of z = row[lo:hi] / T, in one pass."""
    m = tl.full([], float("-inf"), tl.float32)
    s = tl.full([], 0.0, tl.float32)
    z, offs, mask = _load(row_ptr, lo, hi, temperature, BLOCK, DIVIDE)  # the first block
    m, s = _accumulate(m, s, tl.max(z, axis=0), z, 1.0)
    topk, thr, rest = _prime(tl.where(mask, _pack(z, offs), _SENT), KMAX, BLOCK)
    topk, thr = _insert(topk, thr, rest, KMAX)
    for start in range(lo + BLOCK, hi, BLOCK):
        z, offs, mask = _load(row_ptr, start, hi, temperature, BLOCK, DIVIDE)
        block_max = tl.max(z, axis=0)
        m, s = _accumulate(m, s, block_max, z, 1.0)
        kth_value, _ = _unpack(thr)
        # a later token ties with an earlier one and loses, so only a larger value can enter
        if (block_max > kth_value) | (thr == _SENT):
            topk, thr = _insert(topk, thr, tl.where(mask, _pack(z, offs), _SENT), KMAX)
    return topk, m, s


@triton.jit
def gumbel_of(r):
    """Gumbel(0, 1) noise of softgrpo/philox.py from one Philox output word r (uint32)."""
    # top 23 bits plus half a step: a uniform strictly inside (0, 1), exact in fp32
    u = ((r >> 9).to(tl.float32) + 0.5) * 1.1920928955078125e-07
    return -tl.log(-tl.log(u))


@triton.jit
def _gumbel(seed, offset, ids):
    """Gumbel(0, 1) noise of softgrpo/philox.py: Philox keyed by seed, counter (id, offset)."""
    return gumbel_of(tl.randint(seed, (offset << 32) | ids).to(tl.uint32, bitcast=True))


@triton.jit
def _filtered(vals, n, top_p, KMAX: tl.constexpr):
    """p_hat of spec 2.2 on the first n slots of the sorted top-KMAX values, 0 elsewhere."""
    slot = tl.arange(0, KMAX)
    v = tl.where(slot < n, vals, float("-inf"))
    e = tl.exp(v - tl.max(v, axis=0))  # the full-vocabulary normaliser cancels in the renorm
    return nucleus(tl.math.div_rn(e, tl.sum(e, axis=0)), n, top_p, KMAX)


@triton.jit
def nucleus(p, n, top_p, KMAX: tl.constexpr):
    """Top-p on the first n of probabilities p sorted descending, renormalised; 0 elsewhere."""
    slot = tl.arange(0, KMAX)
    acc = tl.full([], 0.0, tl.float64)
    cum = tl.zeros([KMAX], tl.float32)
    prev = tl.full([], -1.0, tl.float32)
    tie = tl.full([], 0.0, tl.float32)
    for r in range(n):  # inclusive cumsum, sequential in fp64 as torch's CPU cumsum
        p_r = tl.sum(tl.where(slot == r, p, 0.0), axis=0)
        acc += p_r.to(tl.float64)
        tie = tl.where(p_r == prev, tie, acc.to(tl.float32))  # a tie keeps its first slot's sum
        prev = p_r
        cum = tl.where(slot == r, tie, cum)
    p = tl.where((cum - p > top_p) | (slot >= n), 0.0, p)  # cut once the mass before > top_p
    return tl.math.div_rn(p, tl.sum(p, axis=0))


@triton.jit
def _finish(keys, lse, row, seed_ptr, offset_ptr, thinking_ptr, ids_ptr, perturbed_ptr,
            weights_ptr, logprob_ptr, lse_ptr, k, discrete_k, top_p, discrete_top_p, tau,
            noise_scale, clamp_lo, clamp_hi, mask_threshold, eps, KMAX: tl.constexpr,
            NOISE: tl.constexpr):
    """Everything after the top-KMAX of one row: filters, noise, slot order, outputs."""
    slot = tl.arange(0, KMAX)
    # sort the set (bitonic): every later reduction sees one order whatever the merge history
    keys = tl.sort(keys, descending=True)
    vals, ids = _unpack(keys)
    if NOISE:
        g = _gumbel(tl.load(seed_ptr + row), tl.load(offset_ptr + row), ids)
    else:
        g = tl.zeros([KMAX], tl.float32)
    thinking = tl.load(thinking_ptr + row) != 0

    # Soft row: y = l + c * clamp(g), slots by y descending (stable), weights softmax(y / tau).
    soft = slot < k
    p = _filtered(vals, k, top_p, KMAX)
    log_p = tl.log(p + eps)
    g_soft = tl.minimum(tl.maximum(g, clamp_lo), clamp_hi)
    y = tl.where(p == 0.0, float("-inf"), log_p + noise_scale * g_soft)  # cut: y -inf, w 0
    # slot j precedes slot i iff y_j > y_i, or y_j == y_i and j < i (a stable sort)
    before = (y[None, :] > y[:, None]) | ((y[None, :] == y[:, None]) &
                                         (slot[None, :] < slot[:, None]))
    pos = tl.sum((before & soft[None, :]).to(tl.int32), axis=1)
    y_tau = tl.where(soft, tl.math.div_rn(y, tau), float("-inf"))
    e = tl.exp(y_tau - tl.max(y_tau, axis=0))  # max-shifted softmax; idle slots give 0
    weights = tl.math.div_rn(e, tl.sum(e, axis=0))
    kept = soft & (log_p > mask_threshold)
    density = tl.where(kept, -g_soft - tl.exp(-g_soft), 0.0)  # Gumbel(0, 1) log-density
    soft_logprob = tl.math.div_rn(tl.sum(density, axis=0), tl.sum(kept.to(tl.float32), axis=0))

    # Discrete row: exact Gumbel-max (unclamped, unscaled g) over the kept slots.
    p_d = _filtered(vals, discrete_k, discrete_top_p, KMAX)
    log_p_d = tl.log(p_d + eps)
    score = tl.where((slot < discrete_k) & (p_d != 0.0), log_p_d + g, float("-inf"))
    first = tl.min(tl.where(score == tl.max(score, axis=0), slot, KMAX), axis=0)  # argmax
    pick = slot == first
    token = tl.sum(tl.where(pick, ids, 0), axis=0)
    token_log_p = tl.sum(tl.where(pick, log_p_d, 0.0), axis=0)
    token_logprob = tl.sum(tl.where(pick, vals, 0.0), axis=0) - lse

    # Soft rows scatter slot i to position pos_i; discrete rows write [s, 0, ...] in place.
    lead = slot == 0
    out = row.to(tl.int64) * k + tl.where(thinking, pos, slot)
    live = tl.where(thinking, soft, slot < k)
    tl.store(ids_ptr + out, tl.where(thinking, ids, tl.where(lead, token, 0)), mask=live)
    tl.store(perturbed_ptr + out, tl.where(thinking, y, tl.where(lead, token_log_p, 0.0)),
             mask=live)
    tl.store(weights_ptr + out, tl.where(thinking, weights, lead.to(tl.float32)), mask=live)
    tl.store(logprob_ptr + row, tl.where(thinking, soft_logprob, token_logprob))
    tl.store(lse_ptr + row, lse)


# k, discrete_k and n_chunks only bound stores and loops: not specialised on their values, so
# a new value does not compile the kernel again
@triton.jit(do_not_specialize=["k", "discrete_k"])
def _row_kernel(logits_ptr, stride_b, V, temperature, seed_ptr, offset_ptr, thinking_ptr,
                ids_ptr, perturbed_ptr, weights_ptr, logprob_ptr, lse_ptr, k, discrete_k, top_p,
                discrete_top_p, tau, noise_scale, clamp_lo, clamp_hi, mask_threshold, eps,
                KMAX: tl.constexpr, BLOCK: tl.constexpr, DIVIDE: tl.constexpr,
                NOISE: tl.constexpr):
    """One program per row: scan the whole row, then finish it."""
    row = tl.program_id(0)
    keys, m, s = _scan(logits_ptr + row.to(tl.int64) * stride_b, 0, V, temperature, KMAX,
                       BLOCK, DIVIDE)
    _finish(keys, m + tl.log(s), row, seed_ptr, offset_ptr, thinking_ptr, ids_ptr,
            perturbed_ptr, weights_ptr, logprob_ptr, lse_ptr, k, discrete_k, top_p,
            discrete_top_p, tau, noise_scale, clamp_lo, clamp_hi, mask_threshold, eps, KMAX,
            NOISE)


@triton.jit(do_not_specialize=["n_chunks"])
def _chunk_kernel(logits_ptr, stride_b, V, chunk, n_chunks, temperature, keys_ptr, max_ptr,
                  sum_ptr, KMAX: tl.constexpr, BLOCK: tl.constexpr, DIVIDE: tl.constexpr):
    """Stage 1: one program per (row, chunk) writes the chunk's top-KMAX keys, max, sum."""
    pid = tl.program_id(0)
    row = pid // n_chunks
    lo = (pid % n_chunks) * chunk
    keys, m, s = _scan(logits_ptr + row.to(tl.int64) * stride_b, lo, tl.minimum(lo + chunk, V),
                       temperature, KMAX, BLOCK, DIVIDE)
    tl.store(keys_ptr + pid.to(tl.int64) * KMAX + tl.arange(0, KMAX), keys)
    tl.store(max_ptr + pid, m)
    tl.store(sum_ptr + pid, s)


@triton.jit
def merge_normalisers(max_ptr, sum_ptr, n_chunks, row, CHUNKS: tl.constexpr):
    """log-sum-exp of a row from its chunks' maxima and rescaled sums of exp."""
    base = row.to(tl.int64) * n_chunks
    m = tl.full([], float("-inf"), tl.float32)
    s = tl.full([], 0.0, tl.float32)
    for start in range(0, n_chunks, CHUNKS):
        offs = start + tl.arange(0, CHUNKS)
        mask = offs < n_chunks
        part_m = tl.load(max_ptr + base + offs, mask=mask, other=float("-inf"))
        part_s = tl.load(sum_ptr + base + offs, mask=mask, other=0.0)
        m, s = _accumulate(m, s, tl.max(part_m, axis=0), part_m, part_s)
    return m + tl.log(s)


@triton.jit
def merge_keys(keys_ptr, max_ptr, sum_ptr, n_chunks, row, KMAX: tl.constexpr,
               CHUNKS: tl.constexpr):
    """A row's top-KMAX keys (unordered) and log-sum-exp from its chunks' (_chunk_kernel)."""
    base = row.to(tl.int64) * n_chunks
    topk = tl.load(keys_ptr + base * KMAX + tl.arange(0, KMAX))  # chunk 0's set primes the merge
    thr = tl.min(topk, axis=0)
    for start in range(KMAX, n_chunks * KMAX, CHUNKS * KMAX):
        offs = start + tl.arange(0, CHUNKS * KMAX)
        key = tl.load(keys_ptr + base * KMAX + offs, mask=offs < n_chunks * KMAX, other=_SENT)
        topk, thr = _insert(topk, thr, key, KMAX)
    return topk, merge_normalisers(max_ptr, sum_ptr, n_chunks, row, CHUNKS)


@triton.jit(do_not_specialize=["n_chunks", "k", "discrete_k"])
def _merge_kernel(keys_ptr, max_ptr, sum_ptr, n_chunks, seed_ptr, offset_ptr, thinking_ptr,
                  ids_ptr, perturbed_ptr, weights_ptr, logprob_ptr, lse_ptr, k, discrete_k,
                  top_p, discrete_top_p, tau, noise_scale, clamp_lo, clamp_hi, mask_threshold,
                  eps, KMAX: tl.constexpr, CHUNKS: tl.constexpr, NOISE: tl.constexpr):
    """Stage 2: one program per row merges its chunks' keys and normalisers, then finishes."""
    row = tl.program_id(0)
    topk, lse = merge_keys(keys_ptr, max_ptr, sum_ptr, n_chunks, row, KMAX, CHUNKS)
    _finish(topk, lse, row, seed_ptr, offset_ptr, thinking_ptr, ids_ptr,
            perturbed_ptr, weights_ptr, logprob_ptr, lse_ptr, k, discrete_k, top_p,
            discrete_top_p, tau, noise_scale, clamp_lo, clamp_hi, mask_threshold, eps, KMAX,
            NOISE)


def _launch_options(num_warps: int, programs_per_sm: int) -> dict:
    """num_warps, FMA contraction off, and a register budget per thread (maxnreg) that keeps
    programs_per_sm programs resident in a 64K register file (at most 255). The budget is set
    explicitly because ptxas' own choice spilled a few bytes at 40-80 registers on some of
    these kernels (benchmarks/compile_check.py: sm_80 and sm_90, triton 3.6 and 3.9)."""
    budget = 65536 // (programs_per_sm * num_warps * 32) // 8 * 8
    return dict(num_warps=num_warps, enable_fp_fusion=FP_FUSION, maxnreg=min(255, budget))


@functools.cache
def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 1  # the interpreter: nothing to fill
    return torch.cuda.get_device_properties(device).multi_processor_count


def _aligned(logits: torch.Tensor) -> bool:
    """Whether every row starts 16-byte aligned and V is a multiple of 16, as Triton's
    specialisation tests them (pointer, row stride, V): then the scan loads 16 bytes at a time
    and fits 80 registers; otherwise it loads element by element and needs up to 128."""
    return (logits.data_ptr() % 16 == 0 and logits.stride(0) % 16 == 0
            and logits.shape[1] % 16 == 0)


def _n_chunks(rows: int, vocab: int, block: int, programs_per_sm: int,
              device: torch.device) -> int:
    """Chunks per row: as many (row, chunk) programs as fit resident at once (one wave,
    programs_per_sm on every SM), while each chunk still streams MIN_BLOCKS_PER_CHUNK blocks.
    V=151936 bf16 on an H100 (132 SMs, 3 programs): B>=199 -> 1, B=128 -> 3, B=32 -> 12,
    B<=20 -> 19."""
    wanted = programs_per_sm * _sm_count(device) // rows
    return max(1, min(wanted, math.ceil(vocab / (MIN_BLOCKS_PER_CHUNK * block))))


def scan_layout(logits: torch.Tensor, kmax: int, block_v: int | None, n_chunks: int | None
                ) -> tuple[torch.Tensor, int, int, int, int]:
    """How a launcher streams (B, V) logits: (the logits as rows of unit column stride, the
    block, scan programs per SM, chunks per row, chunk length in whole blocks); block_v and
    n_chunks override the block (at least kmax: _prime's groups) and the chunk count."""
    rows, vocab = logits.shape
    logits = rows_2d(logits, vocab)
    block = max(block_v or BLOCK_BYTES // logits.element_size(), kmax)
    programs = PROGRAMS_PER_SM if _aligned(logits) else 2
    chunks = n_chunks or _n_chunks(rows, vocab, block, programs, logits.device)
    chunk = triton.cdiv(triton.cdiv(vocab, chunks), block) * block  # whole blocks per chunk
    return logits, block, programs, triton.cdiv(vocab, chunk), chunk


def soft_sample(logits: torch.Tensor, k: int, temperature: float, top_p: float, tau: float,
                noise_scale: float, seed: torch.Tensor, offset: torch.Tensor,
                thinking: torch.Tensor, clamp_lo: float, clamp_hi: float, discrete_k: int,
                discrete_top_p: float, mask_threshold: float, eps: float, *,
                block_v: int | None = None, n_chunks: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launcher of softgrpo.reference.soft_sample's kernel, with its arguments (already checked
    by softgrpo.ops.sampling.soft_sample).

    logits (B, V) fp32/bf16/fp16, any row stride (a view whose column stride is not 1 is
    copied once). seed, offset (B,) int64; thinking (B,) bool.
    Returns ids (B, k) int64, perturbed and weights (B, k) fp32, logprob (B,) fp32 as the
    reference, and lse (B,) fp32, the logsumexp of the row of logits / T (T = 1 when greedy):
    NaN for a row with a NaN, -inf for a row of -inf (the caller's data check).
    block_v, n_chunks: override the streamed block (a power of two; at least KMAX is used) and
    the chunks per row (tests use them to run the split path on small V).
    Raises ValueError when max(k, discrete_k) > MAX_KMAX.
    """
    rows, vocab = logits.shape
    kmax = block_k(max(k, discrete_k))
    if kmax > MAX_KMAX:
        raise ValueError(f"k and discrete_k must be <= {MAX_KMAX} on CUDA, got {k}, {discrete_k}")
    logits, block, programs, chunks, chunk = scan_layout(logits, kmax, block_v, n_chunks)
    greedy = temperature == 0.0
    temperature = 1.0 if greedy else temperature  # greedy: the filtered distribution at T = 1

    device = logits.device
    ids = torch.empty((rows, k), dtype=torch.int64, device=device)
    perturbed = torch.empty((rows, k), dtype=torch.float32, device=device)
    weights = torch.empty_like(perturbed)
    logprob = torch.empty(rows, dtype=torch.float32, device=device)
    lse = torch.empty_like(logprob)
    row_args = (seed.to(torch.int64).contiguous(), offset.to(torch.int64).contiguous(),
                thinking.contiguous().view(torch.uint8), ids, perturbed, weights, logprob, lse,
                k, discrete_k, top_p, discrete_top_p, tau, noise_scale, clamp_lo, clamp_hi,
                mask_threshold, eps)
    scan = _launch_options(NUM_WARPS_SCAN, programs)
    divide = temperature != 1.0  # x / 1 == x: skip the division
    if chunks == 1 and kmax <= FUSED_KMAX:
        _row_kernel[(rows,)](logits, logits.stride(0), vocab, temperature, *row_args, KMAX=kmax,
                             BLOCK=block, DIVIDE=divide, NOISE=not greedy, **scan)
        return ids, perturbed, weights, logprob, lse
    keys = torch.empty((rows, chunks, kmax), dtype=torch.int64, device=device)
    part_max = torch.empty((rows, chunks), dtype=torch.float32, device=device)
    part_sum = torch.empty_like(part_max)
    _chunk_kernel[(rows * chunks,)](logits, logits.stride(0), vocab, chunk, chunks, temperature,
                                    keys, part_max, part_sum, KMAX=kmax, BLOCK=block,
                                    DIVIDE=divide, **scan)
    _merge_kernel[(rows,)](keys, part_max, part_sum, chunks, *row_args, KMAX=kmax,
                           CHUNKS=min(MERGE_CHUNKS, triton.next_power_of_2(chunks)),
                           NOISE=not greedy, **_launch_options(min(16, max(4, kmax // 8)), 1))
    return ids, perturbed, weights, logprob, lse
