"""Learning benchmark: GRPO and SofT-GRPO under each soft-row likelihood on the built-in task,
over several seeds, with the same budget (spec 6 and 9).

    python -m benchmarks.learning [--seeds 0-4] [--configs grpo,release,exact,token,token-0.5]
        [--steps N] [--workers W] [--runs DIR] [--out FILE] [--set key=value ...]

Each run is the trainer itself (``softgrpo.trainer.train`` on the shipped config "default",
plus the configuration's settings, the seed and --set), one process per run, W at a time
(default: one per CPU core, each with one torch thread). A run already finished under
--runs is reused, so an interrupted benchmark picks up where it stopped. Writes FILE: per
configuration the mean and standard error over seeds of held-out Pass@1 and Pass@k before and
after training, thinking length, wall time; and FILE with .png: held-out Pass@1 against step,
the mean with a band of one standard error per configuration.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import math
import multiprocessing
import os
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

from benchmarks.run import machine, versions

# name -> the settings that define it (each states its rollout noise clamp explicitly, so the
# table does not depend on the shipped default's choice)
CONFIGS = {
    "grpo": dict(algorithm="grpo", likelihood="release", noise_clamp=[-1.5, 3.0]),
    "release": dict(algorithm="softgrpo", likelihood="release", noise_clamp=[-1.5, 3.0]),
    "exact": dict(algorithm="softgrpo", likelihood="exact", noise_clamp=None),
    "token": dict(algorithm="softgrpo", likelihood="token", noise_clamp=None),
    "token-0.5": dict(algorithm="softgrpo", likelihood="token", conditional_weight=0.5,
                      noise_clamp=None),
}
OUT = Path("benchmarks/results/learning-cpu.md")
RUNS = Path("runs/learning")


def _seeds(text: str) -> list[int]:
    """"0-4" or "0,3,7" -> seeds."""
    if "-" in text:
        lo, hi = (int(x) for x in text.split("-"))
        return list(range(lo, hi + 1))
    return [int(x) for x in text.split(",")]


def settings(name: str, seed: int, steps: int | None, extra: dict[str, str]) -> dict:
    """The TrainConfig overrides of one run (on top of the shipped config "default")."""
    out = {**CONFIGS[name], "seed": seed, "progress": False, "threads": 1, **extra}
    return out if steps is None else {**out, "steps": steps}


def run(name: str, seed: int, steps: int | None, extra: dict[str, str], out: Path) -> dict:
    """Train one (configuration, seed) into ``out`` (stdout and stderr into out/train.log);
    returns its summary.json. Runs in a worker process."""
    from softgrpo.config import load_config
    from softgrpo.trainer import SUMMARY_FILE, train

    if (out / SUMMARY_FILE).is_file():
        return json.loads((out / SUMMARY_FILE).read_text())
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_config("default", {**settings(name, seed, steps, extra), "output_dir": str(out)})
    streams = sys.stdout, sys.stderr
    with open(out / "train.log", "w") as log:
        sys.stdout = sys.stderr = log
        try:
            return train(cfg)
        finally:
            sys.stdout, sys.stderr = streams


def _steps_done(out: Path) -> int:
    path = out / "metrics.jsonl"
    if not path.is_file():
        return 0
    return sum('"kind": "train"' in line for line in path.read_text().splitlines())


def run_all(jobs: list[tuple[str, int]], steps: int, extra: dict[str, str], runs: Path,
            workers: int) -> dict[tuple[str, int], dict]:
    """Every (configuration, seed) job, ``workers`` processes at a time, a progress bar each
    (steps done, read from the run's metrics.jsonl)."""
    bars = {job: tqdm(total=steps, desc=f"{job[0]} seed {job[1]}", position=i, leave=True,
                      file=sys.stderr) for i, job in enumerate(jobs)}
    results = {}
    context = multiprocessing.get_context("spawn")  # fresh interpreters: no shared torch state
    with cf.ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = {pool.submit(run, name, seed, steps, extra, runs / name / f"seed{seed}"):
                   (name, seed) for name, seed in jobs}
        pending = set(futures)
        while pending:
            done, pending = cf.wait(pending, timeout=2.0)
            for future in done:
                results[futures[future]] = future.result()  # a failed run raises here
            for (name, seed), bar in bars.items():
                bar.update(_steps_done(runs / name / f"seed{seed}") - bar.n)
    for bar in bars.values():
        bar.close()
    return results


def _mean_se(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def _fmt(values: list[float], digits: int = 3) -> str:
    mean, se = _mean_se(values)
    return f"{mean:.{digits}f} ± {se:.{digits}f}"


def curves(runs: Path, name: str, seeds: list[int]) -> dict[int, list[float]]:
    """step -> held-out Pass@1 of every seed at that step (eval records of metrics.jsonl)."""
    from softgrpo import metrics

    out: dict[int, list[float]] = {}
    for seed in seeds:
        for r in metrics.read(runs / name / f"seed{seed}"):
            if r["kind"] == "eval":
                out.setdefault(r["step"], []).append(r["pass@1"])
    return out


def table(results: dict[tuple[str, int], dict], names: list[str], seeds: list[int]) -> str:
    first = results[(names[0], seeds[0])]["first_eval"]
    k = max(int(key.removeprefix("pass@")) for key in first if key.startswith("pass@"))
    paired = "grpo" in names  # each seed's final Pass@1 / Pass@k minus GRPO's, same seed
    lines = [(f"| configuration | held-out Pass@1 before | after | gain | seeds improved | "
              f"Pass@{k} before | after | thinking tokens before | after | wall time s |"
              + (f" Pass@1 after - grpo (paired) | Pass@{k} after - grpo |" if paired else "")),
             "|---|" + "---:|" * (11 if paired else 9)]

    def final(name: str, key: str) -> list[float]:
        return [results[(name, s)]["final_eval"][key] for s in seeds]

    for name in names:
        rs = [results[(name, s)] for s in seeds]
        before = [r["first_eval"]["pass@1"] for r in rs]
        after = final(name, "pass@1")
        gain = [a - b for a, b in zip(after, before)]
        cells = [f"| {name}", _fmt(before), _fmt(after), _fmt(gain),
                 f"{sum(g > 0 for g in gain)}/{len(gain)}",
                 _fmt([r["first_eval"][f"pass@{k}"] for r in rs]),
                 _fmt(final(name, f"pass@{k}")),
                 _fmt([r["first_eval"]["thinking_length"] for r in rs], 2),
                 _fmt([r["final_eval"]["thinking_length"] for r in rs], 2),
                 _fmt([r["wall_time_s"] for r in rs], 0)]
        if paired:
            cells += [_fmt([a - b for a, b in zip(final(name, key), final("grpo", key))])
                      if name != "grpo" else "" for key in ("pass@1", f"pass@{k}")]
        lines.append(" | ".join(cells) + " |")
    return "\n".join(lines)


def plot(runs: Path, names: list[str], seeds: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in names:
        points = sorted(curves(runs, name, seeds).items())
        steps = [s for s, _ in points]
        stats = [_mean_se(v) for _, v in points]
        mean = [m for m, _ in stats]
        se = [0.0 if math.isnan(e) else e for _, e in stats]
        ax.plot(steps, mean, "o-", label=name)
        ax.fill_between(steps, [m - e for m, e in zip(mean, se)],
                        [m + e for m, e in zip(mean, se)], alpha=0.2)
    ax.set_xlabel("step")
    ax.set_ylabel("held-out Pass@1")
    ax.set_title(f"built-in task, {len(seeds)} seeds (mean ± standard error)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report(results: dict[tuple[str, int], dict], names: list[str], seeds: list[int],
           command: str, runs: Path, out: Path) -> str:
    cfg = results[(names[0], seeds[0])]
    png = out.with_suffix(".png")
    plot(runs, names, seeds, png)
    defs = "; ".join(f"`{name}`: " + ", ".join(f"{k}={v}" for k, v in CONFIGS[name].items())
                     for name in names)
    return "\n".join([
        "# Learning on the built-in task: GRPO and SofT-GRPO by soft-row likelihood", "",
        f"`{command}` on {machine('cpu')}; {versions('cpu')}; one torch thread per run.", "",
        (f"Each row: {len(seeds)} seeds ({', '.join(map(str, seeds))}) of `softgrpo train` (the "
         f"shipped config `default`, {cfg['steps']} steps of the same budget) with the "
         f"configuration's settings: {defs}. Held-out Pass@1 / Pass@k: the task's held-out "
         "problems, each algorithm decoding as it trains; values are the mean ± standard error "
         "over seeds; wall time is the whole run (warm start, evaluations, training) with "
         "other runs and other work on the machine beside it: compare it loosely."), "",
        table(results, names, seeds), "",
        f"![held-out Pass@1 against step]({png.name})", "",
        ("Same machine, same seed, same settings: the same metrics.jsonl, bit for bit (tested). "
         "Another CPU (another instruction set, another torch build) rounds differently, and a "
         "tiny model's RL amplifies that: expect other numbers per seed elsewhere; the means "
         "over seeds are what to compare."), ""])


def main(argv: list[str] | None = None) -> Path:
    from softgrpo.config import parse_overrides

    parser = argparse.ArgumentParser(prog="python -m benchmarks.learning",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0-4", help="e.g. 0-4 or 0,3,7 (default 0-4)")
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help=f"comma-separated, from {list(CONFIGS)}")
    parser.add_argument("--steps", type=int, help="training steps (default: the config's)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--runs", type=Path, default=RUNS, help="run directories (reused)")
    parser.add_argument("--out", type=Path, default=OUT)
    args, rest = parser.parse_known_args(argv)
    extra = parse_overrides(rest)
    names = args.configs.split(",")
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        parser.error(f"unknown configurations {unknown}; choose from {list(CONFIGS)}")
    seeds = _seeds(args.seeds)
    steps = args.steps
    if steps is None:  # the bars need the count: the shipped default's, or --set's
        from softgrpo.config import load_config
        steps = load_config("default", extra).steps
    started = time.perf_counter()
    results = run_all([(n, s) for n in names for s in seeds], steps, extra, args.runs,
                      max(1, args.workers))
    command = "python -m benchmarks.learning " + " ".join(argv if argv is not None
                                                          else sys.argv[1:])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report(results, names, seeds, command.strip(), args.runs, args.out))
    print(f"{args.out} ({time.perf_counter() - started:.0f} s)")
    return args.out


if __name__ == "__main__":
    main()
