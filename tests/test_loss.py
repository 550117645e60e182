"""The GRPO / SofT-GRPO loss (softgrpo.loss) against hand-computed values (spec section 5)."""

import math

import pytest
import torch

from softgrpo.loss import (
    AGG_MODES,
    aggregate,
    grpo_advantages,
    kl_penalty,
    policy_loss,
    softgrpo_loss,
)

F64 = torch.float64


def t(x, **kw):
    return torch.tensor(x, dtype=F64, **kw)


# --------------------------------------------------------------------------- advantages

def test_grpo_advantages_hand_values():
    adv = grpo_advantages(t([1.0, 0.0, 0.0, 1.0]), 2)
    half = 0.5 / (math.sqrt(0.5) + 1e-6)  # |r - mean| = 0.5, unbiased std = sqrt(0.5)
    torch.testing.assert_close(adv, t([half, -half, -half, half]), rtol=0, atol=1e-12)
    adv3 = grpo_advantages(t([1.0, 0.0, 0.0]), 3)
    std = math.sqrt(1.0 / 3.0)  # ((2/3)^2 + 2 (1/3)^2) / 2 = 1/3
    torch.testing.assert_close(adv3, t([2 / 3, -1 / 3, -1 / 3]) / (std + 1e-6), rtol=0,
                               atol=1e-12)


def test_grpo_advantages_dr_grpo_variant():
    adv = grpo_advantages(t([1.0, 0.0, 0.0, 1.0, 3.0, 0.0]), 3, normalize_std=False)
    torch.testing.assert_close(adv, t([2 / 3, -1 / 3, -1 / 3, -1 / 3, 5 / 3, -4 / 3]), rtol=0,
                               atol=1e-12)


def test_grpo_advantages_group_of_one():
    r = t([2.0, -1.0, 0.5])
    torch.testing.assert_close(grpo_advantages(r, 1), r / (1 + 1e-6), rtol=0, atol=1e-15)
    torch.testing.assert_close(grpo_advantages(r, 1, eps=0.0), r, rtol=0, atol=0)
    torch.testing.assert_close(grpo_advantages(r, 1, normalize_std=False), r, rtol=0, atol=0)


@pytest.mark.parametrize("eps", [1e-6, 0.0])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_grpo_advantages_all_equal_is_exactly_zero(eps, dtype):
    # 0.1 * 3 / 3 != 0.1 in floating point: the mean leaves rounding that must not leak out
    r = torch.tensor([0.1, 0.1, 0.1, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0], dtype=dtype)
    adv = grpo_advantages(r, 3, eps=eps)
    assert adv.dtype == dtype
    assert torch.isfinite(adv).all()
    assert (adv[:9] == 0).all()
    assert adv[9] > 0 > adv[10]


def test_grpo_advantages_int_and_bool_rewards():
    ref = grpo_advantages(t([1.0, 0.0, 1.0, 1.0]), 2)
    for r in (torch.tensor([1, 0, 1, 1]), torch.tensor([True, False, True, True])):
        out = grpo_advantages(r, 2)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, ref.float())


@pytest.mark.parametrize("kwargs, match", [
    (dict(rewards=t([[1.0, 0.0]]), group_size=1), "rewards"),
    (dict(rewards=t([1.0, 0.0]), group_size=0), "group_size"),
    (dict(rewards=t([1.0, 0.0, 1.0]), group_size=2), "group_size"),
    (dict(rewards=t([1.0, 0.0]), group_size=2, eps=-1e-6), "eps"),
])
def test_grpo_advantages_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        grpo_advantages(**kwargs)


# --------------------------------------------------------------------------- aggregate

VALUES = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]
MASK = [[1, 1, 0], [1, 0, 0], [0, 0, 0]]  # the last row has no token


@pytest.mark.parametrize("agg, expected", [
    ("token-mean", (1 + 2 + 4) / 3),
    ("seq-mean-token-sum", (3 + 4 + 0) / 3),
    ("seq-mean-token-mean", (1.5 + 4 + 0) / 3),
    ("seq-mean-token-sum-norm", (3 + 4 + 0) / 3),  # sum over rows / L (here L = B = 3)
])
def test_aggregate_modes(agg, expected):
    v = t(VALUES, requires_grad=True)
    out = aggregate(v, torch.tensor(MASK), agg)
    assert out.item() == pytest.approx(expected, abs=1e-12)
    out.backward()
    assert (v.grad[torch.tensor(MASK) == 0] == 0).all()


@pytest.mark.parametrize("agg", AGG_MODES)
def test_aggregate_empty_mask_and_nan_padding(agg):
    v = t([[math.nan, -math.inf], [math.inf, 1.0]], requires_grad=True)
    out = aggregate(v, torch.zeros(2, 2, dtype=torch.bool), agg)
    assert out.item() == 0.0 and out.requires_grad
    out.backward()
    assert (v.grad == 0).all()
    assert aggregate(torch.zeros(0, 3), torch.zeros(0, 3), agg).item() == 0.0  # no rows


# --------------------------------------------------------------------------- kl_penalty

def test_kl_penalty_kinds_hand_values():
    logp, ref = t([[-1.0, -2.0]]), t([[-1.5, -1.0]])  # logp - ref = [0.5, -1]
    torch.testing.assert_close(kl_penalty(logp, ref, "k1"), t([[0.5, -1.0]]))
    torch.testing.assert_close(kl_penalty(logp, ref, "abs"), t([[0.5, 1.0]]))
    for kind in ("k2", "mse"):
        torch.testing.assert_close(kl_penalty(logp, ref, kind), t([[0.125, 0.5]]))
    k3 = t([[math.exp(-0.5) + 0.5 - 1.0, math.e - 2.0]])  # k = ref - logp = [-0.5, 1]
    for kind in ("k3", "low_var_kl"):
        torch.testing.assert_close(kl_penalty(logp, ref, kind), k3)
    assert kl_penalty(logp, ref).shape == (1, 2)  # default kind is low_var_kl


def test_kl_penalty_low_var_kl_clamps_like_verl():
    # k = ref - logp: 3 -> e^3 - 4 = 16.09 clamped to 10; +-30 -> k clamped to +-20 first,
    # -20 gives e^-20 + 19 -> 10; 0 -> 0
    logp = t([[0.0, 0.0, 0.0, 0.0]], requires_grad=True)
    ref = t([[3.0, 30.0, -30.0, 0.0]])
    kl = kl_penalty(logp, ref)
    torch.testing.assert_close(kl, t([[10.0, 10.0, 10.0, 0.0]]))
    kl.sum().backward()
    assert (logp.grad == 0).all()  # all clamped (or at the minimum): no gradient
    lp = t([[-0.2]], requires_grad=True)
    kl_penalty(lp, t([[-0.7]])).sum().backward()  # d/dlogp (e^k - k - 1) = 1 - e^k
    assert lp.grad.item() == pytest.approx(1 - math.exp(-0.5), abs=1e-12)


def test_kl_penalty_bad_input():
    with pytest.raises(ValueError, match="kind"):
        kl_penalty(t([[0.0]]), t([[0.0]]), "k4")
    with pytest.raises(ValueError, match="ref_logp"):
        kl_penalty(t([[0.0, 1.0]]), t([[0.0]]))


# --------------------------------------------------------------------------- policy_loss

# row 0 (A = +1): ratios 1.5 (high clip active: -1.2), 0.5 (unclipped: -0.5), 1.1 (-1.1),
#   then a padded position holding -inf;
# row 1 (A = -1): ratios 0.5 (low clip active: 0.8), 1.5 (unclipped: 1.5), 4 (4 > dual
#   bound 3: 3), 1.1 (1.1).
RATIOS = [[1.5, 0.5, 1.1, 1.0], [0.5, 1.5, 4.0, 1.1]]
PG = [[-1.2, -0.5, -1.1, 0.0], [0.8, 1.5, 3.0, 1.1]]
# d pg / d logp = -A * ratio where the unclipped branch is active, else 0
GRAD_PG = [[0.0, -0.5, -1.1, 0.0], [0.0, 1.5, 0.0, 1.1]]
MASK_PG = [[1, 1, 1, 0], [1, 1, 1, 1]]


def _example(requires_grad=True):
    old = t([[-1.0, -2.0, -0.5, -math.inf], [-1.5, -0.7, -2.5, -0.3]])
    logp = old + torch.log(t(RATIOS))
    logp[0, 3] = -math.inf  # padding: -inf - (-inf) = NaN must not leak
    logp.requires_grad_(requires_grad)
    return logp, old, t([1.0, -1.0]), torch.tensor(MASK_PG)


@pytest.mark.parametrize("agg, expected", [
    ("token-mean", (-2.8 + 6.4) / 7),
    ("seq-mean-token-sum", (-2.8 + 6.4) / 2),
    ("seq-mean-token-mean", (-2.8 / 3 + 6.4 / 4) / 2),
    ("seq-mean-token-sum-norm", (-2.8 + 6.4) / 4),  # the release: sum over rows / L = 4
])
def test_policy_loss_hand_example(agg, expected):
    logp, old, adv, mask = _example()
    loss, _ = policy_loss(logp, old, adv, mask, agg=agg)
    assert loss.dtype == F64
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    loss.backward()
    weights = {"token-mean": t([[1 / 7] * 4] * 2),
               "seq-mean-token-sum": t([[1 / 2] * 4] * 2),
               "seq-mean-token-mean": t([[1 / 6] * 4, [1 / 8] * 4]),
               "seq-mean-token-sum-norm": t([[1 / 4] * 4] * 2)}[agg]
    torch.testing.assert_close(logp.grad, t(GRAD_PG) * weights, rtol=0, atol=1e-12)


def test_policy_loss_metrics():
    logp, old, adv, mask = _example()
    _, m = policy_loss(logp, old, adv, mask)
    kept = [r for row, mrow in zip(RATIOS, MASK_PG) for r, k in zip(row, mrow) if k]
    expected = {
        "clip_frac_low": 1 / 7, "clip_frac_high": 1 / 7, "dual_clip_frac": 1 / 7,
        "ratio_mean": sum(kept) / 7, "ratio_min": 0.5, "ratio_max": 4.0,
        "approx_kl": sum(r - math.log(r) - 1 for r in kept) / 7,  # k3 of KL(old || new)
    }
    assert set(m) == set(expected)
    for key, value in expected.items():
        assert not m[key].requires_grad
        assert m[key].item() == pytest.approx(value, abs=1e-12), key


def test_policy_loss_dual_clip_off_and_per_token_advantages():
    logp, old, adv, mask = _example()
    loss, m = policy_loss(logp, old, adv, mask, dual_clip=None)
    assert loss.item() == pytest.approx((-2.8 + 6.4 + 1.0) / 7, abs=1e-12)  # 4 instead of 3
    assert m["dual_clip_frac"].item() == 0.0
    loss.backward()
    assert logp.grad[1, 2].item() == pytest.approx(4.0 / 7, abs=1e-12)
    # a (B, L) advantage equal to the broadcast (B,) one gives the same loss
    same, _ = policy_loss(logp, old, adv[:, None].expand(2, 4).clone(), mask)
    ref, _ = policy_loss(logp, old, adv, mask)
    assert same.item() == ref.item()


def test_policy_loss_asymmetric_clip():
    # clip_high 0.28 (DAPO's clip-higher): ratio 1.25 with A > 0 is no longer clipped
    old = t([[0.0, 0.0]])
    logp = torch.log(t([[1.25, 0.7]])).requires_grad_()
    adv, mask = t([1.0]), torch.ones(1, 2)
    loss, m = policy_loss(logp, old, adv, mask, clip_low=0.1, clip_high=0.28)
    assert loss.item() == pytest.approx((-1.25 - 0.7) / 2, abs=1e-12)
    assert m["clip_frac_high"].item() == 0.0
    loss, m = policy_loss(logp, old, -adv, mask, clip_low=0.1, clip_high=0.28)
    assert loss.item() == pytest.approx((1.25 + 0.9) / 2, abs=1e-12)  # 0.7 clipped up to 0.9
    assert m["clip_frac_low"].item() == 0.5


def test_policy_loss_matches_elementwise_formula():
    g = torch.Generator().manual_seed(0)
    old = -torch.rand(3, 5, generator=g, dtype=F64) * 3
    logp = old + torch.randn(3, 5, generator=g, dtype=F64) * 0.6
    adv = torch.randn(3, generator=g, dtype=F64)
    mask = torch.rand(3, 5, generator=g) > 0.3
    pg = [[0.0] * 5 for _ in range(3)]
    for b in range(3):
        a = adv[b].item()
        for j in range(5):
            rho = math.exp(logp[b, j].item() - old[b, j].item())
            v = max(-a * rho, -a * min(max(rho, 0.8), 1.2))
            pg[b][j] = min(v, -3.0 * a) if a < 0 else v
    n = mask.sum(-1).tolist()
    rows = [sum(p for p, k in zip(pg[b], mask[b].tolist()) if k) for b in range(3)]
    expected = {"token-mean": sum(rows) / sum(n), "seq-mean-token-sum": sum(rows) / 3,
                "seq-mean-token-mean": sum(r / max(c, 1) for r, c in zip(rows, n)) / 3,
                "seq-mean-token-sum-norm": sum(rows) / 5}
    for agg in AGG_MODES:
        loss, _ = policy_loss(logp, old, adv, mask, agg=agg)
        assert loss.item() == pytest.approx(expected[agg], abs=1e-12), agg


@pytest.mark.parametrize("agg", AGG_MODES)
def test_policy_loss_empty_mask(agg):
    logp, old, adv, _ = _example()
    loss, m = policy_loss(logp, old, adv, torch.zeros(2, 4), agg=agg)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert (logp.grad == 0).all()
    assert {k: v.item() for k, v in m.items()} == {
        "clip_frac_low": 0.0, "clip_frac_high": 0.0, "dual_clip_frac": 0.0, "ratio_mean": 1.0,
        "ratio_min": 1.0, "ratio_max": 1.0, "approx_kl": 0.0}


def test_policy_loss_bf16_computes_in_fp32():
    logp, old, adv, mask = _example(requires_grad=False)
    loss, _ = policy_loss(logp.bfloat16(), old.bfloat16(), adv.bfloat16(), mask)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


@pytest.mark.parametrize("kwargs, match", [
    (dict(old_logp=t([[0.0, 0.0, 0.0]])), "old_logp"),
    (dict(mask=torch.ones(2, 3)), "mask"),
    (dict(advantages=t([1.0, 1.0, 1.0])), "advantages"),
    (dict(advantages=t([[1.0], [1.0]])), "advantages"),
    (dict(logp=t([0.0, 0.0])), "logp"),
    (dict(clip_low=-0.1), "clip_low"),
    (dict(clip_low=1.0), "clip_low"),
    (dict(clip_high=-0.2), "clip_high"),
    (dict(dual_clip=1.0), "dual_clip"),
    (dict(agg="sum"), "agg"),
])
def test_policy_loss_bad_input(kwargs, match):
    args = dict(logp=t([[0.0, 0.0], [0.0, 0.0]]), old_logp=t([[0.0, 0.0], [0.0, 0.0]]),
                advantages=t([1.0, -1.0]), mask=torch.ones(2, 2))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        policy_loss(**args)


def test_policy_loss_wrong_dtype_is_type_error():
    with pytest.raises(TypeError, match="old_logp"):
        policy_loss(t([[0.0]]), torch.zeros(1, 1, dtype=torch.int64), t([1.0]), torch.ones(1, 1))


# --------------------------------------------------------------------------- softgrpo_loss

def test_softgrpo_loss_combines_terms():
    logp, old, adv, mask = _example()
    ref = old - 0.5  # k = ref - logp = -0.5 - log(ratio)
    ref[0, 3] = math.nan  # padding in the reference too
    entropy = t([[0.3, 0.2, 0.1, math.nan], [0.4, 0.5, 0.6, 0.7]], requires_grad=True)
    loss, m = softgrpo_loss(logp, old, adv, mask, ref_logp=ref, kl_coef=0.1, entropy=entropy,
                            entropy_coef=0.01)
    kept = [r for row, mrow in zip(RATIOS, MASK_PG) for r, k in zip(row, mrow) if k]
    kl = sum(math.exp(-0.5) / r + 0.5 + math.log(r) - 1 for r in kept) / 7
    ent = 2.8 / 7
    pg = (-2.8 + 6.4) / 7
    assert m["pg_loss"] == pytest.approx(pg, abs=1e-12)
    assert m["kl_loss"] == pytest.approx(kl, abs=1e-12)
    assert m["entropy"] == pytest.approx(ent, abs=1e-12)
    assert m["loss"] == pytest.approx(pg + 0.1 * kl - 0.01 * ent, abs=1e-12)
    assert loss.item() == pytest.approx(m["loss"], abs=1e-15)
    assert all(isinstance(v, float) for v in m.values())
    assert {"clip_frac_low", "clip_frac_high", "dual_clip_frac", "ratio_mean", "ratio_min",
            "ratio_max", "approx_kl"} <= set(m)
    loss.backward()
    assert torch.isfinite(logp.grad).all() and logp.grad[0, 3] == 0
    # d/dlogp of 0.1 * kl: 0.1 * (1 - e^k) / 7 added to the policy gradient
    k = -0.5 - torch.log(t(RATIOS))
    expected = t(GRAD_PG) / 7 + 0.1 * (1 - torch.exp(k)) / 7 * torch.tensor(MASK_PG)
    torch.testing.assert_close(logp.grad, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(entropy.grad, -0.01 / 7 * torch.tensor(MASK_PG, dtype=F64))


def test_softgrpo_loss_kl_only_when_asked():
    logp, old, adv, mask = _example(requires_grad=False)
    pg, _ = policy_loss(logp, old, adv, mask)
    loss, m = softgrpo_loss(logp, old, adv, mask)  # no reference: no KL term, no kl metric
    assert loss.item() == pg.item() and "kl_loss" not in m and "entropy" not in m
    loss, m = softgrpo_loss(logp, old, adv, mask, ref_logp=old - 1.0, kl_coef=0.0)
    assert loss.item() == pg.item() and m["kl_loss"] > 0  # reported, not added


@pytest.mark.parametrize("kind", ["k1", "k2", "mse", "k3", "low_var_kl"])
def test_softgrpo_loss_kl_kinds(kind):
    logp, old, adv, mask = _example(requires_grad=False)
    ref = old + 0.3
    pg, _ = policy_loss(logp, old, adv, mask)
    loss, m = softgrpo_loss(logp, old, adv, mask, ref_logp=ref, kl_coef=0.5, kl_kind=kind)
    kl = aggregate(kl_penalty(logp, ref, kind), mask)  # forward only: padding is dropped
    assert m["kl_loss"] == pytest.approx(kl.item(), abs=1e-12)
    assert loss.item() == pytest.approx(pg.item() + 0.5 * kl.item(), abs=1e-12)


def test_softgrpo_loss_gradient_reaches_logp_only():
    logp, old, adv, mask = _example()
    old.requires_grad_()
    adv.requires_grad_()
    ref = (old.detach() - 0.2).requires_grad_()
    loss, _ = softgrpo_loss(logp, old, adv, mask, ref_logp=ref)
    loss.backward()
    assert logp.grad is not None and logp.grad.abs().sum() > 0
    assert old.grad is None and adv.grad is None and ref.grad is None


def test_softgrpo_loss_gradcheck():
    g = torch.Generator().manual_seed(1)
    old = -torch.rand(3, 6, generator=g, dtype=F64) * 2
    logp = (old + torch.randn(3, 6, generator=g, dtype=F64) * 0.5).requires_grad_()
    ref = old + torch.randn(3, 6, generator=g, dtype=F64) * 0.3
    adv = torch.randn(3, generator=g, dtype=F64)
    mask = torch.rand(3, 6, generator=g) > 0.2
    entropy = torch.rand(3, 6, generator=g, dtype=F64).requires_grad_()
    for agg in AGG_MODES:
        def f(lp, ent, agg=agg):
            return softgrpo_loss(lp, old, adv, mask, ref_logp=ref, kl_coef=0.05, entropy=ent,
                                 entropy_coef=0.01, agg=agg)[0]
        assert torch.autograd.gradcheck(f, (logp, entropy))


@pytest.mark.parametrize("kwargs, match", [
    (dict(ref_logp=t([[0.0]])), "ref_logp"),
    (dict(entropy=t([[0.0]])), "entropy"),
    (dict(entropy_coef=0.01), "entropy"),
    (dict(kl_coef=-0.001), "kl_coef"),
    (dict(entropy_coef=-0.1), "entropy_coef"),
    (dict(kl_kind="full"), "kl_kind"),
])
def test_softgrpo_loss_bad_input(kwargs, match):
    logp, old, adv, mask = _example(requires_grad=False)
    with pytest.raises(ValueError, match=match):
        softgrpo_loss(logp, old, adv, mask, **kwargs)
