"""Triton multiplex_sample kernels (kernels/multiplex.py) vs the reference, through the
interpreter."""

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton is first imported

import math

import pytest
import torch

from softgrpo.kernels import multiplex as kernel
from softgrpo.reference import multiplex as ref
from tests.test_kernel_sampling import make_logits, row_keys


def check(logits, k, temperature=1.0, top_k=0, top_p=1.0, uniform=False, keys=None, **launch):
    """Kernel == reference: ids and kept sets exactly, values to 1e-5; lse == logsumexp."""
    seed, offset = row_keys(logits.shape[0]) if keys is None else keys
    args = (k, temperature, top_k, top_p, uniform, seed, offset)
    expected = ref.multiplex_sample(logits, *args)
    ids, logprob, weights, kept, lse = kernel.multiplex_sample(logits, *args, **launch)
    assert ids.dtype == kept.dtype == torch.int64 and logprob.dtype == torch.float32
    torch.testing.assert_close(ids, expected[0], rtol=0, atol=0)
    torch.testing.assert_close(kept, expected[3], rtol=0, atol=0)
    torch.testing.assert_close(logprob, expected[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(weights, expected[2], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lse, torch.logsumexp(logits.float() / temperature, -1),
                               rtol=1e-6, atol=1e-5)


SHAPES = [  # B, V, dtype, launch: one chunk of one block, many blocks, split in chunks
    (3, 257, torch.float32, dict(block_v=512, n_chunks=1)),
    (5, 200, torch.bfloat16, dict(block_v=32)),
    (1, 1000, torch.float16, dict(block_v=32, n_chunks=5)),
    (4, 300, torch.float32, dict(block_v=16, n_chunks=4)),
]
SETTINGS = [
    dict(k=3),
    dict(k=5, temperature=0.7, uniform=True),
    dict(k=2, temperature=1.3, top_k=7, top_p=0.9),
    dict(k=6, top_k=16, top_p=1.0),
    dict(k=1, top_k=3, top_p=0.5),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"B{s[0]}-V{s[1]}-{s[2]}-{s[3]}")
@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: "-".join(map(str, s.values())))
def test_matches_reference(shape, setting):
    b, v, dtype, launch = shape
    check(make_logits(b, v, dtype), **setting, **launch)


def test_blocks_out_of_reach_are_skipped_without_changing_a_draw():
    """Wide logits: most blocks lie beyond the noise's spread below the running maximum."""
    logits = make_logits(6, 512, scale=25.0, seed=3)
    check(logits, 4, block_v=16, n_chunks=2)


def test_masked_tokens_strided_rows_and_top_k_at_the_limit():
    logits = make_logits(4, 300, seed=4)
    logits[1, :295] = -math.inf  # fewer finite values than top_k
    check(logits, 3, top_k=8, top_p=0.95, block_v=32)
    check(logits, 3, block_v=32)
    wide = make_logits(3, 260, seed=5)[:, :257]  # row stride 260, V 257: unaligned rows
    check(wide, 2, top_k=128, top_p=0.99, block_v=128, n_chunks=2)


def test_ties_go_to_the_smaller_id():
    logits = torch.zeros(2, 64, dtype=torch.bfloat16)  # every z equal: the noise decides
    check(logits, 4, block_v=16)
    check(logits, 4, top_k=10, block_v=16)


def test_rows_of_all_minus_inf_give_a_minus_inf_normaliser():
    logits = make_logits(2, 64)
    logits[1] = -math.inf
    seed, offset = row_keys(2)
    for top_k in (0, 4):
        *_, lse = kernel.multiplex_sample(logits, 3, 1.0, top_k, 1.0, False, seed, offset,
                                          block_v=16)
        assert lse[1] == -math.inf and math.isfinite(lse[0])
