"""SofT-GRPO end to end with verl's trainer on one GPU: the shipped recipe, two steps, a tiny
local model (benchmarks/gpu_check.sh runs it where verl and a CUDA vLLM 0.32 are installed).

    python -m benchmarks.verl_recipe_check OUT_DIR

Writes a tiny Llama checkpoint (tokenizer with a plain chat template) and train/val parquet
files in verl's format under OUT_DIR, then runs ``python -m verl.trainer.main_ppo`` with the
recipe softgrpo_r1_distill_qwen_1.5b scaled down: rollout on verl's vLLM server
(rollout.name=softgrpo_vllm, agent loop softgrpo_single_turn) -> reward -> GRPO advantage ->
softgrpo actor update, weight sync verl's own. Exits with main_ppo's status.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
RECIPE = Path(__file__).resolve().parents[1] / "adapters" / "verl" / "configs"


def prepare(out: Path) -> tuple[Path, Path]:
    """The tiny checkpoint and the train parquet (val is the same file)."""
    import pandas as pd

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from hf_models import make_model, make_tokenizer

    tokenizer = make_tokenizer(split_think_end=True)
    tokenizer.chat_template = TEMPLATE
    model = make_model("llama", len(tokenizer), hidden=128, tokenizer=tokenizer)
    model_dir = out / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    rows = [{"data_source": "openai/gsm8k", "prompt": [{"role": "user", "content": q}],
             "reward_model": {"style": "rule", "ground_truth": a},
             "extra_info": {"index": i, "split": "train"}}
            for i, (q, a) in enumerate([("1 + 2 =", "3"), ("x = 3 so", "3"),
                                        ("the answer is", "4"), ("( 4 ) =", "4")])]
    data = out / "train.parquet"
    pd.DataFrame(rows).to_parquet(data)
    return model_dir, data


def command(out_dir: Path, *extra: str) -> list[str]:
    """The main_ppo command line of the scaled-down recipe (data and model prepared under
    out_dir), followed by ``extra`` overrides."""
    model_dir, data = prepare(out_dir)
    a, r = "actor_rollout_ref.actor", "actor_rollout_ref.rollout"
    overrides = [
        f"data.train_files={data}", f"data.val_files={data}", "data.train_batch_size=4",
        "data.max_prompt_length=32", "data.max_response_length=32",
        f"actor_rollout_ref.model.path={model_dir}",
        "actor_rollout_ref.model.enable_gradient_checkpointing=false",
        f"{a}.ppo_mini_batch_size=4", f"{a}.ppo_micro_batch_size_per_gpu=4",
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=4",
        f"{r}.log_prob_micro_batch_size_per_gpu=4", f"{r}.n=2",
        f"{r}.tensor_model_parallel_size=1", f"{r}.gpu_memory_utilization=0.3",
        f"{r}.agent.num_workers=1", "trainer.n_gpus_per_node=1",
        "trainer.total_training_steps=2", "trainer.logger=[console]",
        "trainer.val_before_train=false", "trainer.test_freq=-1", "trainer.save_freq=-1",
        f"trainer.default_local_dir={out_dir / 'checkpoints'}",
        f"hydra.run.dir={out_dir / 'hydra'}",  # not ./outputs
    ]
    return [sys.executable, "-m", "verl.trainer.main_ppo", "--config-path", str(RECIPE),
            "--config-name", "softgrpo_r1_distill_qwen_1.5b", *overrides, *extra]


def main(out: str) -> int:
    out_dir = Path(out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    line = command(out_dir)
    print(" ".join(line), flush=True)
    env = {**os.environ, "VERL_USE_EXTERNAL_MODULES": "softgrpo.adapters.verl"}
    return subprocess.run(line, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "runs/verl_recipe_check"))
