"""What a soft thought carries on mnns: how much of a soft step's weight lies on partial sums
that are reachable at that step, on those of an optimal sign choice, and on how many reachable
partial sums at once, before training (the warm-started policy) and after.

    python -m benchmarks.soft_weights RUN [RUN ...] [--samples 8] [--mode soft|soft-no-noise]
        [--threshold 0.05] [--out FILE]

RUN: an mnns run's output_dir (``softgrpo train --config mnns``); runs of one configuration
(seeds) are pooled. Each model rolls out the run's held-out problems (``samples`` per
problem, the run's soft-thinking settings in decoding ``mode``); thinking step t of a sample
is its t-th soft row, with weights softmax(perturbed / tau) over its top-k tokens. Writes
FILE (a table per step) and FILE with .png: for each thinking step, the share of soft steps
carrying a given number of reachable partial sums (each with at least ``threshold`` of the
weight), before and after training.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import torch

THRESHOLD = 0.05  # a partial sum counts as carried when it has this share of the weight


def step_stats(rollout, tokenizer, prompts: list[str], tau: float,
               threshold: float = THRESHOLD) -> list[dict]:
    """One record per soft thinking step of an mnns rollout: {"step" (1-based), "reachable"
    (weight on partial sums reachable after that many signs), "optimal" (weight on partial
    sums of an optimal sign choice at that step), "carried" (reachable partial sums with at
    least ``threshold`` of the weight)}. Steps past the n - 1 the task asks for are skipped."""
    from softgrpo import gumbel_softmax_weights
    from softgrpo.tasks import mnns_digits, mnns_optimal_paths, mnns_partial_sums

    weights = gumbel_softmax_weights(rollout.perturbed.float(), tau).cpu()
    words = tokenizer.convert_ids_to_tokens(rollout.topk_ids.reshape(-1).tolist())
    values = [int(w) if w.lstrip("-").isdigit() else None for w in words]
    k = rollout.topk_ids.shape[-1]
    out = []
    for b, prompt in enumerate(prompts):
        digits = mnns_digits(prompt)
        reachable = [set(level) for level in mnns_partial_sums(digits)[:-1]]
        optimal = [{path[t] for path in mnns_optimal_paths(digits)} for t in range(len(digits))]
        soft = rollout.thinking_mask[b].nonzero().squeeze(1).tolist()
        for t, pos in enumerate(soft[:len(reachable)]):
            base = (b * rollout.topk_ids.shape[1] + pos) * k
            slots = [(values[base + j], float(weights[b, pos, j])) for j in range(k)]
            out.append({
                "step": t + 1,
                "reachable": sum(w for v, w in slots if v in reachable[t]),
                "optimal": sum(w for v, w in slots if v in optimal[t]),
                "carried": sum(1 for v, w in slots if v in reachable[t] and w >= threshold)})
    return out


def analyse(run: Path, which: str, samples: int, mode: str,
            threshold: float = THRESHOLD) -> list[dict]:
    """step_stats of a run's policy before ("initial": its warm start) or after ("final": its
    latest checkpoint) training, on its held-out problems."""
    from softgrpo import checkpoint
    from softgrpo.components import load_pretrained, problems, rollout_backend
    from softgrpo.config import load_config
    from softgrpo.trainer import INITIAL_DIR

    cfg = load_config(str(run / "config.yaml"))
    if cfg.dataset != "mnns":
        raise ValueError(f"{run} is not an mnns run (dataset {cfg.dataset!r})")
    path = run / INITIAL_DIR if which == "initial" else checkpoint.resolve(run) / "model"
    model, tokenizer = load_pretrained(path, torch.device("cpu"), trainable=False)
    _, held_out = problems(cfg, tokenizer)
    prompts = [p.prompt for p in held_out for _ in range(samples)]
    config = cfg.eval_config(mode)
    backend = rollout_backend(cfg.backend, model, tokenizer)
    stats = []
    batch = cfg.eval_batch_size or cfg.prompts_per_step * cfg.group_size
    with torch.no_grad():
        for start in range(0, len(prompts), batch):
            chunk = prompts[start:start + batch]
            rollout = backend.generate(chunk, config, sequence_ids=torch.arange(
                start, start + len(chunk)))
            stats += step_stats(rollout, tokenizer, chunk, config.tau, threshold)
    return stats


def summary(stats: list[dict]) -> dict[int, dict]:
    """step -> {"steps", "reachable", "optimal" (mean weights), "carried" (Counter)}."""
    out: dict[int, dict] = {}
    for r in stats:
        s = out.setdefault(r["step"], {"steps": 0, "reachable": 0.0, "optimal": 0.0,
                                       "carried": Counter()})
        s["steps"] += 1
        s["reachable"] += r["reachable"]
        s["optimal"] += r["optimal"]
        s["carried"][r["carried"]] += 1
    for s in out.values():
        s["reachable"] /= s["steps"]
        s["optimal"] /= s["steps"]
    return dict(sorted(out.items()))


def table(results: dict[str, dict[str, dict[int, dict]]], threshold: float) -> str:
    """results: label -> {"before"/"after": summary()}."""
    lines = [(f"| runs | model | thinking step | soft steps | weight on reachable sums | "
             f"on optimal-path sums | reachable sums carried (>= {threshold:g} each), mean | "
             "share carrying 2 or more |"), "|---|---|---:|---:|---:|---:|---:|---:|"]
    for label, models in results.items():
        for which, steps in models.items():
            for t, s in steps.items():
                mean = sum(c * n for c, n in s["carried"].items()) / s["steps"]
                several = sum(n for c, n in s["carried"].items() if c >= 2) / s["steps"]
                lines.append(f"| {label} | {which} | {t} | {s['steps']} | {s['reachable']:.3f} "
                             f"| {s['optimal']:.3f} | {mean:.2f} | {several:.3f} |")
    return "\n".join(lines)


def plot(results: dict[str, dict[str, dict[int, dict]]], path: Path, threshold: float) -> None:
    """One row per label, one panel per thinking step: the share of soft steps carrying
    0, 1, 2, ... reachable partial sums, before and after training."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = sorted({t for models in results.values() for s in models.values() for t in s})
    fig, axes = plt.subplots(len(results), len(steps), squeeze=False,
                             figsize=(3.6 * len(steps), 2.8 * len(results)))
    for row, (label, models) in enumerate(results.items()):
        for col, t in enumerate(steps):
            ax = axes[row, col]
            counts = sorted({c for s in models.values() if t in s for c in s[t]["carried"]})
            for shift, (which, s) in zip((-0.2, 0.2), models.items()):
                if t not in s:
                    continue
                share = [s[t]["carried"][c] / s[t]["steps"] for c in counts]
                ax.bar([c + shift for c in counts], share, width=0.4,
                       label=f"{which}: reachable {s[t]['reachable']:.2f}, "
                             f"optimal {s[t]['optimal']:.2f}")
            ax.set_xticks(counts)
            ax.set_title(f"{label}, thinking step {t}", fontsize=9)
            ax.set_xlabel(f"reachable sums with >= {threshold:g} weight", fontsize=8)
            ax.set_ylabel("share of soft steps", fontsize=8)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def measure(groups: dict[str, list[Path]], samples: int, mode: str,
            threshold: float = THRESHOLD) -> dict[str, dict[str, dict[int, dict]]]:
    """label -> {"before", "after"} -> summary(), pooling each label's runs."""
    return {label: {name: summary([r for run in runs for r in analyse(
        run, which, samples, mode, threshold)]) for name, which in (("before", "initial"),
                                                                   ("after", "final"))}
            for label, runs in groups.items()}


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soft_weights",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="mnns run directories")
    parser.add_argument("--samples", type=int, default=8, help="samples per problem")
    parser.add_argument("--mode", default="soft", choices=("soft", "soft-no-noise"))
    parser.add_argument("--threshold", type=float, default=THRESHOLD)
    parser.add_argument("--label", help="the runs' name in the table (default: the first "
                                        "run's directory)")
    parser.add_argument("--out", type=Path, default=Path("soft-weights.md"))
    args = parser.parse_args(argv)
    label = args.label or str(args.runs[0])
    results = measure({label: args.runs}, args.samples, args.mode, args.threshold)
    plot(results, args.out.with_suffix(".png"), args.threshold)
    args.out.write_text(f"Decoding: {args.mode}, {args.samples} samples per held-out problem."
                        f"\n\n{table(results, args.threshold)}\n\n"
                        f"![soft-step weights]({args.out.with_suffix('.png').name})\n")
    print(args.out)
    return args.out


if __name__ == "__main__":
    main()
