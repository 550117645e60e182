"""The soft-row likelihoods as gradient estimators (spec 9) on the bandit of
benchmarks/estimators.py, whose true gradients are exact (closed form, quadrature) or pathwise
with a measured standard error. Fixed seeds: every statistic below is deterministic; the
z-score bounds are in units of the measured standard errors."""

import pytest
import torch

from benchmarks import estimators as est

DRAWS = 10_000
Z_BOUND = 5.0  # |z| of an unbiased estimate exceeds 5 with probability < 1e-6 per component


@pytest.fixture(scope="module")
def results():
    return est.run(DRAWS)


def _rows(rows, estimator, reward=None):
    out = [r for r in rows if r["estimator"] == estimator
           and (reward is None or r["reward"] == reward)]
    assert out
    return out


def test_bandit_cuts_slots_only_at_top_p_08():
    assert len(est.kept_log_probs(est.THETA, 1.0)[0]) == est.K
    assert len(est.kept_log_probs(est.THETA, 0.8)[0]) == 3
    sample = est.rollout(0.8, 0.1, None, 100, 0)
    assert torch.equal(torch.isinf(sample.perturbed).sum(-1), torch.full((100,), 2))


def test_every_case_is_measured(results):
    rows, _ = results
    cases = {(r["reward"], r["top_p"], r["tau"], r["estimator"]) for r in rows}
    assert len(cases) == len(rows) == 2 * 2 * 2 * len(est.ESTIMATORS)


def test_exact_matches_the_true_gradient_in_every_case(results):
    rows = _rows(results[0], "exact")
    assert len(rows) == 8
    for r in rows:
        assert r["max_z"] < Z_BOUND, r
        assert abs(r["ratio"] - 1) < Z_BOUND * r["ratio_se"], r


@pytest.mark.parametrize("estimator", ["token(0)", "token(0.5)"])
def test_token_score_is_unbiased_for_a_token_reward(results, estimator):
    for r in _rows(results[0], estimator, "token"):
        assert r["max_z"] < Z_BOUND, r


def test_token_score_misses_the_soft_weights(results):
    """A bias the z-test detects: the token score ignores the weights' dependence on theta,
    which matters most at tau 1."""
    for r in _rows(results[0], "token(0)", "soft"):
        if r["tau"] == 1.0:
            assert r["max_z"] > 4 * Z_BOUND and r["ratio"] < 0.9, r


def test_token_score_has_the_lowest_variance_for_a_token_reward(results):
    rows = results[0]
    for r in _rows(rows, "token(0)", "token"):
        others = [o for o in rows if o["reward"] == "token" and o["top_p"] == r["top_p"]
                  and o["tau"] == r["tau"] and o["estimator"] != "token(0)"]
        assert all(r["noise_draws"] < o["noise_draws"] for o in others), (r, others)


def test_release_is_shrunk_at_tau_01(results):
    for r in _rows(results[0], "release"):
        if r["tau"] == 0.1:
            assert r["ratio"] + Z_BOUND * r["ratio_se"] < 0.5, r
            assert r["cosine"] > 0.99, r  # shrunk, not turned


def test_token_frequencies_match_the_true_probabilities(results):
    """The closed form (no clamp) and the quadrature (clamp) against every rollout."""
    checks = results[1]
    assert len(checks) == 8 and sum(c["clamp"] is not None for c in checks) == 4
    for c in checks:
        assert c["freq_z"] < Z_BOUND, c


@pytest.mark.parametrize("top_p", est.TOP_PS)
def test_quadrature_is_a_distribution_with_the_right_gradient(top_p):
    _, l = est.kept_log_probs(est.THETA, top_p)
    assert float(est.token_probs(l, est.CLAMP).sum()) == pytest.approx(1.0, abs=1e-10)
    assert est.quadrature_fd_error(top_p) < 1e-8


def test_quadrature_with_a_far_clamp_is_gumbel_max():
    _, l = est.kept_log_probs(est.THETA, 1.0)
    far = est.token_probs(l, (-6.0, 14.0))  # the clamp moves < 1e-6 of the mass
    torch.testing.assert_close(far, torch.softmax(l, -1), atol=2e-6, rtol=0)
    near = est.token_probs(l, est.CLAMP)
    assert float((near - torch.softmax(l, -1)).abs().max()) > 1e-3  # the clamp matters


@pytest.mark.parametrize("top_p, tau, clamp", [(0.8, 0.1, est.CLAMP), (1.0, 1.0, None)])
def test_pathwise_gradient_matches_finite_differences_through_the_sampler(top_p, tau, clamp):
    error, norm = est.pathwise_fd_error(top_p, tau, clamp, 2_000)
    assert norm > 0.1 and error < 1e-3 * norm


def test_metrics_of_known_draws():
    """Per-draw estimates 0 and t: mean t / 2, its noise equals its signal after one draw."""
    t = torch.tensor([1.0, -1.0, 0, 0, 0, 0, 0, 0], dtype=torch.float64)
    truth = est.Truth(t, torch.zeros(est.V, dtype=torch.float64), 0.0)
    m = est.compare(torch.ones(2, dtype=torch.float64), torch.stack([0 * t, t]), truth)
    assert m["ratio"] == pytest.approx(0.5) and m["ratio_se"] == pytest.approx(0.5)
    assert m["cosine"] == pytest.approx(1.0) and m["noise_draws"] == pytest.approx(1.0)
    assert m["max_z"] == pytest.approx(1.0)  # (0.5 - 1) / (std([0, 1]) / sqrt(2))
    assert m["ratio_no_baseline"] == pytest.approx(0.5)
