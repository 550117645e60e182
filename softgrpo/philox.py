"""Counter-based Gumbel noise, bit-identical to the Triton kernels' draws.

Every noise value is a pure function of (seed, offset, token id): Philox4x32 with 10 rounds
(what ``triton.language.randint`` computes) keyed by the 64-bit ``seed`` with the counter
``(token_id, offset, 0, 0)``. In Triton that is ``tl.randint(seed, (offset << 32) | token_id)``.
Independent streams of one (seed, offset, token) (the multiplex sampler's K draws) take the
other words: stream s reads output word s % 4 of the counter ``(token_id, offset, s // 4, 0)``,
so stream 0 is the noise above and four streams cost one Philox evaluation.
Keying by token id rather than top-k rank means a tie or a different top-k order on another
device cannot move noise from one token to another. The adapters put the sequence into the
seed (:func:`noise_key`) and the position into the offset.
"""

from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF
_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85
N_ROUNDS = 10
MAX_OFFSET = 2**31 - 1
MAX_SEED = 2**63 - 1


def _mulhilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # 32x32 -> 64-bit product in int64 without overflow: split b into 16-bit halves.
    p_lo = a * (b & 0xFFFF)
    p_hi = a * (b >> 16)
    hi = (p_hi + (p_lo >> 16)) >> 16
    lo = (((p_hi & 0xFFFF) << 16) + p_lo) & _MASK32
    return hi, lo


def philox4x32(seed: torch.Tensor, offset: torch.Tensor, token: torch.Tensor,
               block: torch.Tensor | int = 0) -> tuple[torch.Tensor, ...]:
    """The four output words of Philox4x32-10 for the counter (token, offset, block, 0);
    int64 tensors holding uint32 values, broadcast."""
    seed, offset, token, block = torch.broadcast_tensors(seed.long(), offset.long(), token.long(),
                                                         torch.as_tensor(block).long())
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    c0, c1, c2 = token & _MASK32, offset & _MASK32, block & _MASK32
    c3 = torch.zeros_like(c0)
    for _ in range(N_ROUNDS):
        hi_b, lo_b = _mulhilo(_ROUND_B, c2)
        hi_a, lo_a = _mulhilo(_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + _KEY_A) & _MASK32
        k1 = (k1 + _KEY_B) & _MASK32
    return c0, c1, c2, c3


def philox_uint32(seed: torch.Tensor, offset: torch.Tensor, token: torch.Tensor,
                  stream: torch.Tensor | int = 0) -> torch.Tensor:
    """Word stream % 4 of Philox4x32-10 at the counter (token, offset, stream // 4, 0)
    (stream 0: the first word of counter (token, offset, 0, 0)); broadcast."""
    if isinstance(stream, int):
        return philox4x32(seed, offset, token, stream // 4)[stream % 4]
    words = torch.stack(philox4x32(seed, offset, token, stream // 4))
    return words.gather(0, (stream.long() % 4).expand(words.shape[1:])[None])[0]


def uniform(seed: torch.Tensor, offset: torch.Tensor, token: torch.Tensor,
            stream: torch.Tensor | int = 0) -> torch.Tensor:
    """fp32 uniforms strictly inside (0, 1): the top 23 bits plus half a step, exact in fp32
    (with 24 bits, 2**24 - 0.5 would round up to 2**24 and give u = 1, g = +inf)."""
    bits = philox_uint32(seed, offset, token, stream) >> 9
    return (bits.float() + 0.5) * 2.0**-23


def gumbel(seed: torch.Tensor, offset: torch.Tensor, token: torch.Tensor,
           stream: torch.Tensor | int = 0) -> torch.Tensor:
    """Unclamped Gumbel(0, 1) noise g = -log(E), E = -log(u) ~ Exp(1); finite for every u.
    ``stream`` selects one of independent noise streams (see the module docstring)."""
    return -torch.log(-torch.log(uniform(seed, offset, token, stream)))


def noise_key(seed: int, sequence: int | torch.Tensor) -> int | torch.Tensor:
    """The 64-bit Philox key of one sequence: the run's seed in the low word, the sequence id
    in the high word. ``seed`` must fit 32 bits and ``sequence`` 31 bits."""
    if not 0 <= int(seed) <= _MASK32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    if isinstance(sequence, torch.Tensor):
        if sequence.numel() and (int(sequence.min()) < 0 or int(sequence.max()) > MAX_OFFSET):
            raise ValueError("sequence ids must be in [0, 2**31)")
        return (sequence.long() << 32) | int(seed)
    if not 0 <= int(sequence) <= MAX_OFFSET:
        raise ValueError(f"sequence must be in [0, 2**31), got {sequence}")
    return (int(sequence) << 32) | int(seed)
