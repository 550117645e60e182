"""SoftGRPOTrainer under ``accelerate launch`` (run by test_trl_distributed.py): trains a few
steps on CPU and writes, from the main process, the logged loss of every step, whether every
process held the same weights after each step, and the final weights.

Usage: python trl_distributed_check.py CHECKPOINT OUTPUT_DIR PER_DEVICE_BATCH RESULT_FILE
(the global batch is PER_DEVICE_BATCH x the number of processes; 4 generations per prompt)."""

import sys

PROMPTS = ["1 + 2 =", "x = 3 so", "the answer is", "( 4 ) =", "we get 5", "y - 2 ="]


def digit_reward(completions, **kwargs):
    return [sum(w.isdigit() for w in c.split()) / max(len(c.split()), 1) for c in completions]


def main(checkpoint: str, output_dir: str, per_device: str, result: str) -> None:
    import torch
    from datasets import Dataset
    from hf_models import make_tokenizer
    from transformers import TrainerCallback

    from softgrpo.adapters.trl import SoftGRPOConfig, SoftGRPOTrainer

    class SameWeights(TrainerCallback):
        """After every optimiser step: do all processes hold the same weights?"""

        def __init__(self):
            self.same: list[bool] = []

        def on_step_end(self, args, state, control, **kwargs):
            flat = torch.cat([p.detach().reshape(-1) for p in trainer.model.parameters()])
            every = trainer.accelerator.gather(flat[None])
            self.same.append(bool((every == every[0]).all()))

    # plain SGD: Adam divides by sqrt(v), so a gradient at rounding level would move a weight
    # by a full learning rate and the one- and two-process weights could not be compared.
    # The "token" likelihood on unclamped noise: with the release's clamp, a slot whose noise
    # was clamped at the rollout sits exactly on the clamp's edge when scored on-policy, and
    # whether it gets a gradient is decided by rounding (one and two processes reduce the
    # gradient in another order), so the runs would differ for a legitimate reason.
    args = SoftGRPOConfig(
        output_dir=output_dir, per_device_train_batch_size=int(per_device), num_generations=4,
        max_completion_length=6, max_thinking_tokens=3, top_k=3, soft_tau=0.5, max_steps=3,
        likelihood="token", soft_noise_clamp=None,
        learning_rate=0.5, optim="sgd", beta=0.01, logging_steps=1, report_to="none",
        save_strategy="no",
        use_cpu=True, bf16=False, seed=5, dataloader_num_workers=0)
    same = SameWeights()
    trainer = SoftGRPOTrainer(model=checkpoint, reward_funcs=digit_reward, args=args,
                              processing_class=make_tokenizer(), callbacks=[same],
                              train_dataset=Dataset.from_dict({"prompt": PROMPTS}))
    trainer.train()
    if trainer.accelerator.is_main_process:
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        weights = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        torch.save({"processes": trainer.accelerator.num_processes, "losses": losses,
                    "same_weights": same.same, "weights": weights}, result)


if __name__ == "__main__":
    main(*sys.argv[1:])
