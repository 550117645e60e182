"""Pass@k evaluation of a policy on held-out problems in several decoding modes (the
trainer's before/after numbers and ``softgrpo eval``): the paper's protocol, Pass@1 to
Pass@32 from 32 samples per problem, plus thinking length and answer diversity."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from softgrpo.components import RewardScorer
from softgrpo.config import TrainConfig
from softgrpo.metrics import thinking_lengths
from softgrpo.rewards import last_boxed, pass_at_k
from softgrpo.rollout import RolloutBackend, SoftThinkingConfig
from softgrpo.tasks import Problem


def evaluate(backend: RolloutBackend, problems: list[Problem], scorer: RewardScorer,
             config: SoftThinkingConfig, *, samples: int, think_end: list[int],
             ks: list[int] | None = None, batch_size: int = 256,
             progress: bool = False) -> dict:
    """Sample ``samples`` responses per problem and score them.

    A sample counts as correct when its reward is >= 1. Sequence ids (noise keys) are
    0..len(problems)*samples-1 under config.seed, so two evaluations with the same config see
    the same noise (a paired comparison, e.g. before and after training). Greedy decoding
    (config.temperature 0) is deterministic: it runs one sample per problem, and Pass@k of
    every k is its Pass@1, exactly.

    Returns:
        {"problems", "samples" (run per problem), "mode" (config.mode), "temperature",
        "pass@k" for k in ks (unbiased, spec 6; default ks = [1, samples]), "reward_mean",
        "response_length", "thinking_length", "distinct_answers", "reward_failures"};
        thinking_length counts the tokens before the think_end token sequence (see
        metrics.thinking_lengths); distinct_answers is the mean over problems of the number
        of different final answers (last \\boxed{}, a missing one counting as one answer)
        among the problem's samples.
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
    if config.temperature == 0:  # deterministic: every sample would be the same
        samples = 1
    rows = [p for p in problems for _ in range(samples)]
    scores, lengths, thinking, answers, failures = [], [], [], [], 0
    for start in tqdm(range(0, len(rows), batch_size), disable=not progress, desc="eval",
                      leave=False):
        chunk = rows[start:start + batch_size]
        ids = torch.arange(start, start + len(chunk))
        rollout = backend.generate([p.prompt for p in chunk], config, sequence_ids=ids)
        scores.append(scorer(rollout.texts, [p.answer for p in chunk]))
        failures += len(scorer.failures)
        lengths.append(rollout.response_mask.sum(1).float().cpu())
        thinking.append(thinking_lengths(rollout, think_end))
        answers += [last_boxed(text) for text in rollout.texts]
    reward = torch.cat(scores)
    correct = (reward >= 1.0).view(len(problems), samples)
    result = {"problems": len(problems), "samples": samples, "mode": config.mode,
              "temperature": config.temperature}
    result.update({f"pass@{k}": pass_at_k(correct, min(k, samples)) for k in ks})
    distinct = [len(set(answers[i:i + samples])) for i in range(0, len(answers), samples)]
    result.update(reward_mean=float(reward.mean()),
                  response_length=float(torch.cat(lengths).mean()),
                  thinking_length=float(torch.cat(thinking).mean()),
                  distinct_answers=sum(distinct) / len(distinct), reward_failures=failures)
    return result


def evaluate_modes(backend: RolloutBackend, problems: list[Problem], scorer: RewardScorer,
                   cfg: TrainConfig, modes: list[str], *, think_end: list[int],
                   progress: bool = False) -> dict[str, dict]:
    """:func:`evaluate` in each decoding mode of ``modes`` (config.EVAL_MODES, through
    cfg.eval_config), with cfg.eval_samples samples, Pass@k for cfg.eval_k_list() and
    cfg.eval_batch_size (default prompts_per_step x group_size) sequences per rollout.
    Returns {mode: result}, each result's "mode" the decoding mode's name."""
    batch = cfg.eval_batch_size or cfg.prompts_per_step * cfg.group_size
    out = {}
    for mode in modes:
        result = evaluate(backend, problems, scorer, cfg.eval_config(mode),
                          samples=cfg.eval_samples, think_end=think_end, ks=cfg.eval_k_list(),
                          batch_size=batch, progress=progress)
        out[mode] = {**result, "mode": mode}
    return out


def table(results: dict[str, dict], label: str = "model") -> str:
    """A plain-text table, one row per evaluation (name -> evaluate() result), e.g. one per
    decoding mode with label="mode"."""
    keys = [k for k in next(iter(results.values())) if k.startswith("pass@")]
    header = [label, *keys, "reward", "resp len", "think len", "answers"]
    rows = [[name, *(f"{r[k]:.4f}" for k in keys), f"{r['reward_mean']:.4f}",
             f"{r['response_length']:.1f}", f"{r['thinking_length']:.1f}",
             f"{r['distinct_answers']:.2f}"]
            for name, r in results.items()]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
