"""Run by test_trl_vllm.py in a fresh process (TRL's colocate mode starts vLLM's external
launcher on this process's rank, which must not meet the suite's in-process engines):
SoftGRPOTrainer with use_vllm=True against the same trainer on the Hugging Face adapter.
Usage: python trl_vllm_check.py CHECKPOINT OUTPUT_DIR POLICY (gumbel or multiplex: K = top_k
= 3 draws, a top-k 6 filter, so kept sets travel too); prints OK."""

import sys

PROMPTS = ["1 + 2 =", "x = 3 so", "the answer is", "( 4 ) ="]
POLICIES = {"gumbel": {}, "multiplex": dict(soft_policy="multiplex", multiplex_top_k=6)}


def digit_reward(completions, **kwargs):
    return [sum(w.isdigit() for w in c.split()) / max(len(c.split()), 1) for c in completions]


def trainer(checkpoint: str, output_dir: str, tokenizer, **overrides):
    from datasets import Dataset

    from softgrpo.adapters.trl import SoftGRPOConfig, SoftGRPOTrainer

    settings = dict(output_dir=output_dir, per_device_train_batch_size=4, num_generations=4,
                    max_completion_length=8, max_thinking_tokens=4, top_k=3, soft_tau=0.5,
                    max_steps=2, learning_rate=5e-2, logging_steps=1, report_to="none",
                    save_strategy="no", use_cpu=True, bf16=False, seed=3, beta=0.01,
                    dataloader_num_workers=0, vllm_dtype="float32",
                    vllm_gpu_memory_utilization=0.1, vllm_max_model_length=64)
    args = SoftGRPOConfig(**{**settings, **overrides})
    return SoftGRPOTrainer(model=checkpoint, reward_funcs=digit_reward, args=args,
                           processing_class=tokenizer,
                           train_dataset=Dataset.from_dict({"prompt": PROMPTS}))


def batch(t):
    t.model.eval()
    return t._generate_and_score_completions([{"prompt": p} for p in PROMPTS for _ in range(4)])


def main(checkpoint: str, output_dir: str, policy: str) -> None:
    import torch
    from hf_models import make_tokenizer

    from softgrpo.adapters import hf
    from softgrpo.adapters import vllm as sv

    tokenizer = make_tokenizer()  # the checkpoint's tokenizer (conftest.checkpoints)
    on_vllm = trainer(checkpoint, output_dir, tokenizer, use_vllm=True, **POLICIES[policy])
    on_hf = trainer(checkpoint, output_dir, tokenizer, use_vllm=False, **POLICIES[policy])

    # 1. the same records, advantages and loss as the Hugging Face path, for the same seeds
    ours, theirs = batch(on_vllm), batch(on_hf)
    assert ours["soft_thinking_mask"].any(), "no soft rows: the check would prove nothing"
    kept = ("soft_kept_ids",) if policy == "multiplex" else ()
    assert all(key in ours for key in kept)
    for key in ("prompt_ids", "completion_ids", "completion_mask", "soft_topk_ids",
                "soft_thinking_mask", "soft_forced_mask", "soft_sequence_ids", "tool_mask",
                *kept):
        assert torch.equal(ours[key], theirs[key]), key
    torch.testing.assert_close(ours["soft_perturbed"], theirs["soft_perturbed"], rtol=0, atol=1e-3)
    torch.testing.assert_close(ours["advantages"], theirs["advantages"])
    losses = [t.compute_loss(t.model, b).item() for t, b in ((on_vllm, ours), (on_hf, theirs))]
    assert abs(losses[0] - losses[1]) < 1e-4 * max(1.0, abs(losses[1])), losses

    # 2. training: weights reach the engine before each generation (TRL's sync)
    before = sv.generate(on_vllm.vllm_generation.llm, tokenizer, PROMPTS,
                         on_vllm.soft_config)
    on_vllm.train()
    logs = [entry for entry in on_vllm.state.log_history if "loss" in entry]
    assert len(logs) == 2 and all(torch.isfinite(torch.tensor(e["loss"])) for e in logs), logs
    assert logs[0]["softgrpo/soft_token_fraction"] > 0
    on_vllm.vllm_generation.sync_weights()  # what the next generation does first
    after = sv.generate(on_vllm.vllm_generation.llm, tokenizer, PROMPTS, on_vllm.soft_config)
    policy = on_vllm.model.eval()
    reference = hf.generate(policy, tokenizer, PROMPTS, on_vllm.soft_config)
    assert torch.equal(after.topk_ids, reference.topk_ids)
    assert after.config.soft_policy == reference.config.soft_policy == on_vllm.soft_config \
        .soft_policy
    torch.testing.assert_close(after.perturbed, reference.perturbed, rtol=0, atol=1e-3)
    assert before.perturbed.shape != after.perturbed.shape or \
        not torch.allclose(before.perturbed, after.perturbed), "the engine kept the old weights"
    print("OK")


if __name__ == "__main__":
    main(*sys.argv[1:])
