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


# ---- Multiplex Thinking (benchmarks/estimators_multiplex.py) ----------------------------------
@pytest.fixture(scope="module")
def multiplex():
    from benchmarks import estimators_multiplex as mx

    return mx, *mx.run(DRAWS)


def _mx_rows(rows, estimator, reward, filters=None):
    out = [r for r in rows if r["estimator"] == estimator and r["reward"] == reward
           and (filters is None or r["filter"] in filters)]
    assert out
    return out


def test_multiplex_filtered_score_is_exact_for_rewards_of_the_draws(multiplex):
    _, rows, _ = multiplex
    for reward in ("token", "uniform", "two-step token"):
        for r in _mx_rows(rows, "filtered", reward):
            assert r["max_z"] < Z_BOUND, r
            assert abs(r["ratio"] - 1) < Z_BOUND * r["ratio_se"], r


def test_multiplex_full_log_prob_equals_filtered_without_a_filter(multiplex):
    _, rows, _ = multiplex
    for reward in ("token", "uniform", "weighted"):
        full, filtered = (_mx_rows(rows, e, reward, ("none",))[0] for e in ("full", "filtered"))
        assert full["ratio"] == pytest.approx(filtered["ratio"], abs=1e-6)
        assert full["noise_draws"] == pytest.approx(filtered["noise_draws"], rel=1e-4)


def test_multiplex_full_log_prob_is_biased_once_the_state_moves(multiplex):
    """Where the filter cuts, the full log-prob's extra term depends on the state: a baseline
    cannot remove it in a two-step episode."""
    _, rows, _ = multiplex
    full = _mx_rows(rows, "full", "two-step token")[0]
    assert full["max_z"] > 4 * Z_BOUND and full["cosine"] < 0.97, full


def test_multiplex_weighted_mix_needs_the_pathwise_part(multiplex):
    _, rows, _ = multiplex
    for r in _mx_rows(rows, "filtered", "weighted"):
        assert r["max_z"] > 4 * Z_BOUND and r["ratio"] < 0.8, r
    for r in _mx_rows(rows, "filtered + pathwise", "weighted"):
        assert r["max_z"] < Z_BOUND, r


def test_multiplex_first_draw_score_is_unbiased_for_the_token_and_less_noisy(multiplex):
    _, rows, _ = multiplex
    for first, filtered in zip(_mx_rows(rows, "first", "token"),
                               _mx_rows(rows, "filtered", "token")):
        assert first["max_z"] < Z_BOUND and first["noise_draws"] < filtered["noise_draws"]


def test_multiplex_draw_frequencies_match_the_filtered_law(multiplex):
    _, _, checks = multiplex
    assert len(checks) == 3
    for c in checks:
        assert c["freq_z"] < Z_BOUND, c


def test_multiplex_truth_is_a_distribution_and_a_gradient():
    from benchmarks import estimators_multiplex as mx

    for top_k, top_p in mx.FILTERS:
        kept = mx.kept_set(est.THETA, top_k, top_p)
        # the constant reward 1 has E[R] = 1 and no gradient
        saved = est.REWARD.clone()
        est.REWARD.fill_(1.0)
        try:
            one = mx.truth(top_k, top_p, "weighted")
        finally:
            est.REWARD.copy_(saved)
        assert one.mean_reward == pytest.approx(1.0, abs=1e-12)
        assert float(one.grad.abs().max()) < 1e-12
        h, e = 1e-6, torch.eye(est.V, dtype=torch.float64)
        t = mx.truth(top_k, top_p, "weighted")
        fd = torch.stack([(mx.expected_reward(est.THETA + h * e[i], top_k, top_p, "weighted")
                           - mx.expected_reward(est.THETA - h * e[i], top_k, top_p, "weighted"))
                          / (2 * h) for i in range(est.V)])
        torch.testing.assert_close(t.grad, fd, atol=1e-8, rtol=1e-6)
        assert len(kept) == {None: 8, 5: 5}[top_k] if top_p == 1.0 else len(kept) == 3
