"""benchmarks/bench_multiplex.py: its eager stand-in for the release's K sampler calls draws
from the filtered law (the one multiplex_sample draws from), and the benchmark runs end to end
on a tiny shape."""

import math

import pytest
import torch
from test_multiplex_sampling import _law

from benchmarks import bench_multiplex as bm
from benchmarks import run

ROW = torch.tensor([2.0, 1.5, 1.0, 0.4, 0.2, -0.5, -1.0, -3.0])


@pytest.mark.parametrize("filters", [dict(top_k=None, top_p=1.0), dict(top_k=6, top_p=1.0),
                                     dict(top_k=4, top_p=0.6), dict(top_k=2, top_p=0.6)],
                         ids=["full", "top6", "top4-p0.6", "top2-p0.6"])
def test_eager_draws_follow_the_filtered_law_and_are_independent(filters):
    """Marginal frequencies of every draw and the joint law of (draw 0, draw 1) against the
    filtered law in float64. top2-p0.6 keeps both tokens only with top-p measured on the
    full-vocabulary mass (0.40 before the second), the release's joint order; renormalised
    inside the top 2 first (0.62 before it) it would keep one. Fixed seed; the bounds are > 6
    standard errors of the worst cell."""
    n = 60_000
    ids, weights = bm.eager(dict(logits=ROW.expand(n, -1), generator=torch.Generator()
                                 .manual_seed(0), **filters))
    p = _law(ROW, bm.T, **filters)
    assert ids.shape == weights.shape == (n, bm.K)
    bound = 6 * math.sqrt(0.25 / n)
    for j in range(bm.K):
        freq = torch.bincount(ids[:, j], minlength=len(ROW)).double() / n
        assert float((freq - p).abs().max()) < bound
        assert float(freq[p == 0].sum()) == 0.0  # a cut token is never drawn
    pair = torch.bincount(ids[:, 0] * len(ROW) + ids[:, 1], minlength=len(ROW) ** 2).double() / n
    assert float((pair - torch.outer(p, p).flatten()).abs().max()) < bound
    drawn = p.float()[ids]  # weights: the drawn probabilities renormalised over the K draws
    torch.testing.assert_close(weights, drawn / drawn.sum(-1, keepdim=True))


def test_eager_sampler_refuses_top_p_without_top_k():
    with pytest.raises(ValueError, match="top_p=0.9 needs top_k"):
        bm.joint_top_k_top_p_sample(torch.full((2, 5), 0.2), None, 0.9)


def test_benchmark_runs_end_to_end_on_a_tiny_shape():
    assert bm in run.discover("multiplex")  # benchmarks.run and gpu_check.sh pick it up
    cases = bm.cases("cpu", batches=(3,), vocab=500)
    assert [c.shape.split(", ", 1)[1] for c in cases] == [
        "no filter, flat logits", "no filter, peaked logits",
        "top_k=64 top_p=0.95, peaked logits"]
    for case in cases:
        d = case.setup()
        mine, (ids, weights) = case.ours(d), case.eager(d)
        assert mine.ids.shape == ids.shape == weights.shape == (3, bm.K)
        if d["top_k"]:  # both draw inside our op's kept set
            for kept, drawn in ((mine.kept, mine.ids), (mine.kept, ids)):
                assert all(set(r.tolist()) <= set(k.tolist()) for r, k in zip(drawn, kept))
    rows = [run.measure(c, "cpu", reps=1) for c in cases]
    text = run.table(rows, "cpu", (0.0, 0.0))
    assert text.count("| multiplex_sample | B=3 K=3 V=500 float32") == 3
