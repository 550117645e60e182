"""softgrpo.adapters.trl: SofT-GRPO inside TRL 1.16's GRPOTrainer, on a tiny local model."""

import math

import pytest
import torch

pytest.importorskip("trl")

from datasets import Dataset
from hf_models import model_and_tokenizer

from softgrpo import SoftThinkingConfig
from softgrpo.adapters.hf import generate, policy_logprobs
from softgrpo.adapters.trl import SoftGRPOConfig, SoftGRPOTrainer, add_soft_head

PROMPTS = ["1 + 2 =", "x = 3 so", "the answer is", "( 4 ) ="]


def digit_reward(completions, **kwargs):
    """TRL's reward signature: one float per completion (the share of digit tokens)."""
    return [sum(w.isdigit() for w in c.split()) / max(len(c.split()), 1) for c in completions]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """A saved tiny model (TRL loads the policy and the reference from the path) and its
    tokenizer object (reloading it by path would pick Qwen2's tokenizer class)."""
    model, tokenizer = model_and_tokenizer("qwen2", hidden=32)
    path = tmp_path_factory.mktemp("tiny-qwen2")
    model.save_pretrained(path)
    return str(path), tokenizer


def _trainer(model_path, tmp_path, **overrides) -> SoftGRPOTrainer:
    settings = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4,
                    max_completion_length=6, max_thinking_tokens=3, top_k=3, soft_tau=0.5,
                    max_steps=3, learning_rate=5e-2, logging_steps=1, report_to="none",
                    save_strategy="no", use_cpu=True, bf16=False, seed=3,
                    dataloader_num_workers=0)
    args = SoftGRPOConfig(**{**settings, **overrides})
    path, tokenizer = model_path
    return SoftGRPOTrainer(model=path, reward_funcs=digit_reward, args=args,
                           processing_class=tokenizer,
                           train_dataset=Dataset.from_dict({"prompt": PROMPTS}))


def test_training_steps_change_parameters_and_log(model_path, tmp_path):
    trainer = _trainer(model_path, tmp_path)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 3
    assert all(math.isfinite(entry["loss"]) for entry in logs)
    for key in ("reward", "completions/mean_length", "kl", "softgrpo/pg_loss",
                "softgrpo/clip_frac_high", "softgrpo/soft_token_fraction"):
        assert all(key in entry for entry in logs), key
    assert all(0.0 < entry["softgrpo/soft_token_fraction"] < 1.0 for entry in logs)
    # old, reference and policy log-probs are one function: no KL before the first update
    assert logs[0]["kl"] == 0.0 and logs[-1]["kl"] > 0.0
    assert "entropy" not in logs[0]  # not computed (it would need the full logits)
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])]
    assert changed


def _batch(trainer):
    trainer.model.eval()
    rows = [{"prompt": p} for p in PROMPTS for _ in range(trainer.num_generations)]
    return trainer._generate_and_score_completions(rows)


def _discrete(batch):
    """The same tokens with every record made discrete ([token, 0, ...]): plain GRPO."""
    ids = batch["soft_topk_ids"].clone()
    ids[..., 1:] = 0
    return {**batch, "soft_topk_ids": ids}


def test_soft_records_reach_the_loss(model_path, tmp_path):
    trainer = _trainer(model_path, tmp_path, beta=0.0, max_thinking_tokens=2)
    batch = _batch(trainer)
    soft = batch["soft_thinking_mask"] & batch["completion_mask"].bool()
    assert soft.any() and (~batch["soft_thinking_mask"] & batch["completion_mask"].bool()).any()
    assert "old_per_token_logps" not in batch  # on-policy: TRL skips it, the loss detaches

    def logps_and_grad(inputs):
        trainer.model.zero_grad()
        ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
        mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
        with trainer._records_of(inputs):
            logps, entropies, _ = trainer._get_per_token_logps_and_entropies(
                trainer.model, ids, mask, inputs["completion_ids"].shape[1],
                compute_entropy=True)
        assert torch.isnan(entropies).all()
        trainer.compute_loss(trainer.model, inputs).backward()
        return logps.detach(), trainer.model.lm_head.weight.grad.clone()

    soft_lp, soft_grad = logps_and_grad(batch)
    plain_lp, plain_grad = logps_and_grad(_discrete(batch))
    # discrete records score the ordinary token log-prob: TRL's own GRPO computation
    with torch.no_grad():
        ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
        mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
        logits = trainer.model(input_ids=ids, attention_mask=mask).logits[:, -ids.shape[1]:]
    width = batch["completion_ids"].shape[1]
    token_lp = torch.log_softmax(logits[:, -width - 1:-1].float(), -1).gather(
        -1, batch["completion_ids"][..., None]).squeeze(-1)
    valid = batch["completion_mask"].bool()
    torch.testing.assert_close(plain_lp[valid], token_lp[valid], rtol=1e-5, atol=1e-5)
    assert (soft_lp[soft] - plain_lp[soft]).abs().min() > 1e-3
    assert not torch.allclose(soft_grad, plain_grad)


def test_trl_loss_type_on_soft_log_probs(model_path, tmp_path):
    trainer = _trainer(model_path, tmp_path, loss_type="dapo", max_steps=2, beta=0.0)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert all("clip_ratio/region_mean" in entry for entry in logs)
    assert all(entry["entropy"] is None for entry in logs)  # TRL's log drops the NaN


@pytest.mark.parametrize("overrides, error", [
    ({"use_vllm": True, "vllm_mode": "server"}, NotImplementedError),
    ({"use_vllm": True, "vllm_tensor_parallel_size": 2}, NotImplementedError),
    ({"use_vllm": True, "vllm_importance_sampling_correction": True}, NotImplementedError),
    ({"entropy_coef": 0.01}, ValueError),
    ({"top_entropy_quantile": 0.5}, ValueError),
    ({"kl_kind": "k9"}, ValueError),
    ({"top_k": 0}, ValueError),
])
def test_config_rejects_unsupported_settings(tmp_path, overrides, error):
    with pytest.raises(error):
        SoftGRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", **overrides)


def test_trainer_rejects_custom_rollouts(model_path, tmp_path):
    args = SoftGRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none",
                          per_device_train_batch_size=4, num_generations=4)
    with pytest.raises(NotImplementedError, match="rollout_func"):
        SoftGRPOTrainer(model=model_path[0], reward_funcs=digit_reward, args=args,
                        processing_class=model_path[1], train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
                        rollout_func=lambda prompts, trainer: {})


@pytest.mark.parametrize("overrides, message", [
    ({"likelihood": "joint"}, "likelihood must be one of"),
    ({"likelihood": "exact"}, "set soft_noise_clamp to None"),
    ({"conditional_weight": 0.5}, "applies to likelihood 'token' only"),
])
def test_config_checks_the_likelihood(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        SoftGRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", **overrides)


def test_soft_head_scores_with_the_configured_likelihood():
    model, tokenizer = model_and_tokenizer("qwen2", hidden=32)
    rollout = generate(model, tokenizer, PROMPTS, SoftThinkingConfig(
        max_new_tokens=6, top_p=0.8, noise_clamp=None, seed=2))
    assert (rollout.perturbed == -math.inf).any()  # cut slots reach the head
    add_soft_head(model, likelihood="token", conditional_weight=0.3)
    with torch.no_grad():
        got = model(softgrpo_rollout=rollout).log_probs
        want = policy_logprobs(model, rollout, likelihood="token", conditional_weight=0.3)
        release = policy_logprobs(model, rollout)
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got[rollout.thinking_mask], release[rollout.thinking_mask])
