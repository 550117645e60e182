"""Pass@1 / Pass@k evaluation of a policy on held-out problems (the trainer's before/after
numbers and ``softgrpo eval``)."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from softgrpo.components import RewardScorer
from softgrpo.metrics import thinking_lengths
from softgrpo.rewards import pass_at_k
from softgrpo.rollout import RolloutBackend, SoftThinkingConfig
from softgrpo.tasks import Problem


def evaluate(backend: RolloutBackend, problems: list[Problem], scorer: RewardScorer,
             config: SoftThinkingConfig, *, samples: int, think_end: list[int],
             ks: list[int] | None = None, batch_size: int = 256,
             progress: bool = False) -> dict:
    """Sample ``samples`` responses per problem and score them.

    A sample counts as correct when its reward is >= 1. Sequence ids (noise keys) are
    0..len(problems)*samples-1 under config.seed, so two evaluations with the same config see
    the same noise (a paired comparison, e.g. before and after training).

    Returns:
        {"problems", "samples", "mode", "temperature", "pass@k" for k in ks (unbiased, spec 6;
        default ks = [1, samples]), "reward_mean", "response_length", "thinking_length",
        "reward_failures"}; thinking_length counts the tokens before the think_end token
        sequence (see metrics.thinking_lengths).
    Raises:
        ValueError: no problems, samples < 1, or a k outside [1, samples].
    """
    if not problems:
        raise ValueError("evaluate needs at least one problem")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    ks = sorted(set(ks or [1, samples]))
    if ks[0] < 1 or ks[-1] > samples:
        raise ValueError(f"every k must lie in [1, samples={samples}], got {ks}")
    rows = [p for p in problems for _ in range(samples)]
    scores, lengths, thinking, failures = [], [], [], 0
    for start in tqdm(range(0, len(rows), batch_size), disable=not progress, desc="eval",
                      leave=False):
        chunk = rows[start:start + batch_size]
        ids = torch.arange(start, start + len(chunk))
        rollout = backend.generate([p.prompt for p in chunk], config, sequence_ids=ids)
        scores.append(scorer(rollout.texts, [p.answer for p in chunk]))
        failures += len(scorer.failures)
        lengths.append(rollout.response_mask.sum(1).float().cpu())
        thinking.append(thinking_lengths(rollout, think_end))
    reward = torch.cat(scores)
    correct = (reward >= 1.0).view(len(problems), samples)
    result = {"problems": len(problems), "samples": samples, "mode": config.mode,
              "temperature": config.temperature}
    result.update({f"pass@{k}": pass_at_k(correct, k) for k in ks})
    result.update(reward_mean=float(reward.mean()),
                  response_length=float(torch.cat(lengths).mean()),
                  thinking_length=float(torch.cat(thinking).mean()), reward_failures=failures)
    return result


def table(results: dict[str, dict]) -> str:
    """A plain-text table, one row per evaluated model (name -> evaluate() result)."""
    keys = [k for k in next(iter(results.values())) if k.startswith("pass@")]
    header = ["model", *keys, "reward", "resp len", "think len"]
    rows = [[name, *(f"{r[k]:.4f}" for k in keys), f"{r['reward_mean']:.4f}",
             f"{r['response_length']:.1f}", f"{r['thinking_length']:.1f}"]
            for name, r in results.items()]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
