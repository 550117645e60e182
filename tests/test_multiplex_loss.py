"""The Multiplex Thinking loss (softgrpo.loss with slot_mask, spec section 10): the release's
verl policy loss "multiplex_thinking" replayed in float64, the joint variant, errors."""

import math

import pytest
import torch

from softgrpo.loss import joint_logprob, policy_loss, softgrpo_loss

F64 = torch.float64


def release_multiplex_loss(old_log_prob, log_prob, advantages, response_mask, topk_probs,
                           cliprange=0.2, clip_ratio_c=3.0):
    """compute_multiplex_thinking_policy_loss of GMLR-Penn/Multiplex-Thinking
    (verl-latest/verl/trainer/ppo/core_algos.py), token-mean aggregation, line by line."""
    k = log_prob.shape[-1]
    response_mask_3d = response_mask.unsqueeze(-1).repeat(1, 1, k)
    is_answer_token = (topk_probs[:, :, 0] == 1.0) & (topk_probs[:, :, 1:].sum(dim=-1) == 0.0)
    topk_weight_mask = topk_probs > 1e-20
    topk_weight_mask = torch.where(is_answer_token.unsqueeze(-1), topk_weight_mask,
                                   torch.ones_like(topk_weight_mask))
    response_mask_3d = response_mask_3d & topk_weight_mask
    negative_approx_kl = torch.clamp(log_prob - old_log_prob, min=-20.0, max=20.0)
    ratio = torch.exp(negative_approx_kl)
    advantages_3d = advantages.detach().unsqueeze(-1).repeat(1, 1, k)
    pg_losses1 = -advantages_3d * ratio
    pg_losses2 = -advantages_3d * torch.clamp(ratio, 1 - cliprange, 1 + cliprange)
    clip_pg_losses1 = torch.maximum(pg_losses1, pg_losses2)
    pg_losses3 = -advantages_3d * clip_ratio_c
    clip_pg_losses2 = torch.min(pg_losses3, clip_pg_losses1)
    pg_losses = torch.where(advantages_3d < 0, clip_pg_losses2, clip_pg_losses1)
    pg_losses_summed = (pg_losses * response_mask_3d.float()).sum(dim=-1)
    mask = response_mask.to(pg_losses_summed.dtype)
    return (pg_losses_summed * mask).sum() / mask.sum()  # verl's agg_loss "token-mean"


def records(b=4, length=6, k=3, seed=0, spread=0.5):
    """Random per-draw log-probs: thinking rows (soft weights), answer rows (one-hot weights),
    right padding; returns the release's inputs and ours (slot_mask)."""
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(b, length, k, generator=g, dtype=F64) * 3
    new = old + torch.randn(b, length, k, generator=g, dtype=F64) * spread
    weights = torch.softmax(torch.randn(b, length, k, generator=g, dtype=F64), -1)
    answer = torch.rand(b, length, generator=g) < 0.4
    weights[answer] = torch.tensor([1.0] + [0.0] * (k - 1), dtype=F64)
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[1, 4:] = False
    mask[3, 2:] = False
    adv = torch.randn(b, generator=g, dtype=F64)
    slot_mask = torch.ones(b, length, k, dtype=torch.bool)
    slot_mask[answer] = torch.tensor([True] + [False] * (k - 1))
    return old, new, adv, mask, weights, slot_mask


@pytest.mark.parametrize("seed,spread", [(0, 0.5), (1, 0.05), (2, 2.0)])
def test_slot_ratio_replays_the_release_loss_and_gradient(seed, spread):
    old, new, adv, mask, weights, slot_mask = records(seed=seed, spread=spread)
    theirs_logp = new.clone().requires_grad_()
    theirs = release_multiplex_loss(old, theirs_logp, adv[:, None].expand(mask.shape), mask,
                                    weights)
    theirs.backward()
    ours_logp = new.clone().requires_grad_()
    ours, _ = policy_loss(ours_logp, old, adv, mask, slot_mask=slot_mask)
    ours.backward()
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-12)
    torch.testing.assert_close(ours_logp.grad, theirs_logp.grad, rtol=0, atol=1e-12)
    full, _ = softgrpo_loss(new, old, adv, mask, slot_mask=slot_mask, kl_coef=0.0)
    assert full.item() == pytest.approx(theirs.item(), abs=1e-12)


def test_joint_ratio_is_the_step_log_prob_in_one_ratio():
    old, new, adv, mask, _, slot_mask = records(seed=3)
    joint_new, joint_old = joint_logprob(new, slot_mask), joint_logprob(old, slot_mask)
    torch.testing.assert_close(joint_new, torch.where(slot_mask, new, 0.0).sum(-1))
    want, _ = policy_loss(joint_new, joint_old, adv, mask)
    got, _ = softgrpo_loss(new, old, adv, mask, slot_mask=slot_mask, ratio="joint",
                           kl_coef=0.0)
    assert got.item() == pytest.approx(want.item(), abs=1e-12)


def test_on_policy_both_ratios_have_the_same_gradient():
    """At logp == old_logp every ratio is 1 and unclipped: A * sum_j grad lp_j either way."""
    old, _, adv, mask, _, slot_mask = records(seed=4)
    grads = []
    for ratio in ("slot", "joint"):
        logp = old.clone().requires_grad_()
        loss, m = softgrpo_loss(logp, old, adv, mask, slot_mask=slot_mask, ratio=ratio,
                                kl_coef=0.0)
        loss.backward()
        grads.append(logp.grad)
        assert m["clip_frac_low"] == m["clip_frac_high"] == 0.0
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-15)


def test_off_policy_the_joint_ratio_clips_sooner():
    """Three draws each 10% more likely: per-draw ratios 1.1 stay inside the clip range, the
    joint ratio 1.331 leaves it."""
    old = torch.full((1, 1, 3), -1.0, dtype=F64)
    logp = old + math.log(1.1)
    mask, adv, slots = torch.ones(1, 1, dtype=torch.bool), torch.ones(1, dtype=F64), \
        torch.ones(1, 1, 3, dtype=torch.bool)
    _, slot = softgrpo_loss(logp, old, adv, mask, slot_mask=slots, kl_coef=0.0)
    _, joint = softgrpo_loss(logp, old, adv, mask, slot_mask=slots, ratio="joint", kl_coef=0.0)
    assert slot["clip_frac_high"] == 0.0 and joint["clip_frac_high"] == 1.0
    assert slot["pg_loss"] == pytest.approx(-3.3) and joint["pg_loss"] == pytest.approx(-1.2)


def test_slot_metrics_count_the_slots_that_count_and_padding_is_never_read():
    old, new, adv, mask, _, slot_mask = records(seed=5)
    new = new.masked_fill(~slot_mask, math.nan)  # unread slots may hold anything
    logp = new.clone().requires_grad_()
    loss, m = policy_loss(logp, old, adv, mask, slot_mask=slot_mask)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logp.grad).all()
    assert (logp.grad[~slot_mask] == 0).all() and (logp.grad[~mask] == 0).all()
    counted = mask[..., None] & slot_mask
    ratio = (new - old).exp()[counted]
    assert m["ratio_mean"].item() == pytest.approx(float(ratio.mean()), abs=1e-12)
    assert m["ratio_max"].item() == pytest.approx(float(ratio.max()), abs=1e-12)


def test_kl_takes_the_joint_log_probs():
    old, new, adv, mask, _, slot_mask = records(seed=6)
    ref = old + 0.1
    _, m = softgrpo_loss(new, old, adv, mask, slot_mask=slot_mask, ref_logp=ref)
    _, want = softgrpo_loss(joint_logprob(new, slot_mask), joint_logprob(old, slot_mask), adv,
                            mask, ref_logp=joint_logprob(ref, slot_mask))
    assert m["kl_loss"] == pytest.approx(want["kl_loss"], abs=1e-12)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(slot_mask=torch.ones(4, 6, 2, dtype=torch.bool)), ValueError, "slot_mask"),
    (dict(slot_mask=None), ValueError, "logp must be 2-D"),
    (dict(ratio="step"), ValueError, "ratio"),
])
def test_bad_input(kwargs, error, match):
    old, new, adv, mask, _, slot_mask = records()
    args = dict(slot_mask=slot_mask)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        softgrpo_loss(new, old, adv, mask, **args)
