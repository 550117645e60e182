"""Every torch.ops.softgrpo op passes opcheck and runs inside torch.compile(fullgraph=True)."""

import pytest
import torch

import softgrpo

K, V, H = 4, 19, 6


def records(n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randperm(V, generator=g)[:K] for _ in range(n)])
    ids[1, 1:] = 0
    return ids, torch.randn(n, K, generator=g)


def op_samples():
    ids, y = records()
    table = torch.randn(V, H, requires_grad=True)
    logits = torch.randn(5, V, requires_grad=True)
    yg = y.clone().requires_grad_()
    ops = torch.ops.softgrpo
    keys = torch.arange(5, dtype=torch.int64)
    yield ops.soft_sample.default, (logits.detach(), K, 1.0, 0.9, 0.1, 1.0, keys, keys,
                                    torch.rand(5) > 0.5, -1.5, 3.0, 3, 0.95, -3.0, 1e-6)
    yield ops.gumbel_softmax_weights.default, (yg, 0.1, ids)
    yield ops.gumbel_softmax_weights.default, (yg, 0.1, None)
    yield ops.soft_embedding.default, (table, ids, torch.softmax(yg, -1))
    yield ops.soft_token_embedding.default, (table, ids, yg, 0.3)
    for reduction in ("mean", "sum"):
        yield ops.soft_logprob.default, (logits, ids, y, 1.0, -1.5, 3.0, -3.0, 1e-6, reduction,
                                         "release", 0.0, 1.0)
    y_cut, order = y.sort(-1, descending=True)  # slot 0 the token, as soft_sample stores it
    ids_cut = ids.gather(-1, order)
    ids_cut[1, 1:] = 0
    y_cut[3, 2:] = -float("inf")  # slots cut by top-p
    for likelihood, weight in (("release", 0.0), ("exact", 0.0), ("token", 0.0), ("token", 0.5)):
        unclamped = (-float("inf"), float("inf"), -float("inf"))
        yield ops.soft_logprob.default, (logits, ids_cut, y_cut, 0.8, *unclamped, 1e-6, "sum",
                                         likelihood, weight, 0.7)


    # multiplex: draws with repeats, a discrete row [s, 0, ...] / [l, -inf, ...], kept sets
    mx_ids = torch.stack([torch.randperm(V, generator=torch.Generator().manual_seed(i))[:K]
                          for i in range(5)])
    mx_kept = torch.cat([mx_ids, torch.full((5, 2), -1)], -1)
    mx_ids[0, 2] = mx_ids[0, 1]
    mx_y = -torch.rand(5, K) - 0.1
    mx_ids[1, 1:], mx_y[1, 1:] = 0, -float("inf")
    hidden, weight, bias = (torch.randn(5, H, requires_grad=True),
                            torch.randn(V, H, requires_grad=True),
                            torch.randn(V, requires_grad=True))
    for top_k, top_p in ((0, 1.0), (6, 0.9)):
        yield ops.multiplex_sample.default, (logits.detach(), 3, 0.8, top_k, top_p, False, keys,
                                             keys)
    for kept in (mx_kept, mx_kept[:, :0]):
        yield ops.multiplex_logprob.default, (logits, mx_ids, mx_y, kept, 0.9)
        yield ops.multiplex_logprob_from_hidden.default, (hidden, weight, bias, mx_ids, mx_y,
                                                          kept, 1.1, 3)


@pytest.mark.parametrize("op,args", list(op_samples()), ids=lambda x: getattr(x, "name", ""))
def test_opcheck(op, args):
    torch.library.opcheck(op, args)


def test_torch_compile_fullgraph():
    ids, y = records()
    table = torch.randn(V, H)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def step(logits, table, y):
        s = softgrpo.soft_sample(logits, K, seed=3)
        e = softgrpo.soft_token_embedding(table, s.ids, y, 0.1)
        lp = softgrpo.soft_logprob(logits, s.ids, s.perturbed)
        w = softgrpo.gumbel_softmax_weights(y, 0.1, ids)
        return e.sum() + lp.sum() + softgrpo.soft_embedding(table, ids, w).sum()

    logits = torch.randn(5, V, requires_grad=True)
    yg = y.clone().requires_grad_()
    out = step(logits, table, yg)
    out.backward()
    s = softgrpo.soft_sample(logits.detach(), K, seed=3)
    eager = (softgrpo.soft_token_embedding(table, s.ids, y, 0.1).sum()
             + softgrpo.soft_logprob(logits.detach(), s.ids, s.perturbed).sum()
             + softgrpo.soft_embedding(table, ids, softgrpo.gumbel_softmax_weights(y, 0.1, ids))
             .sum())
    torch.testing.assert_close(out.detach(), eager)
    assert logits.grad is not None and yg.grad is not None


def test_torch_compile_fullgraph_multiplex():
    from softgrpo.ops.multiplex_logprob import multiplex_logprob, multiplex_logprob_from_hidden

    hidden, weight = torch.randn(5, H), torch.randn(V, H, requires_grad=True)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def step(logits, weight):
        s = softgrpo.multiplex_sample(logits.detach(), 3, top_k=6, top_p=0.9, seed=3)
        lp = multiplex_logprob(logits, s.ids, s.logprobs, kept=s.kept)
        fused = multiplex_logprob_from_hidden(hidden, weight, s.ids, s.logprobs)
        return lp.sum() + fused.sum()

    logits = torch.randn(5, V, requires_grad=True)
    out = step(logits, weight)
    out.backward()
    s = softgrpo.multiplex_sample(logits.detach(), 3, top_k=6, top_p=0.9, seed=3)
    eager = (multiplex_logprob(logits.detach(), s.ids, s.logprobs, kept=s.kept).sum()
             + multiplex_logprob_from_hidden(hidden, weight.detach(), s.ids, s.logprobs).sum())
    torch.testing.assert_close(out.detach(), eager)
    assert logits.grad is not None and weight.grad is not None


def test_autocast_does_not_lower_the_ops_precision():
    ids, y = records()
    table = torch.randn(V, H)
    hidden, weight = torch.randn(5, H), torch.randn(V, H)
    plain = (softgrpo.soft_token_embedding(table, ids, y, 0.1),
             softgrpo.soft_logprob_from_hidden(hidden, weight, ids, y))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = (softgrpo.soft_token_embedding(table, ids, y, 0.1),
                  softgrpo.soft_logprob_from_hidden(hidden, weight, ids, y))
    for a, b in zip(plain, inside):
        assert b.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=0, atol=0)
