"""Learning benchmark: GRPO and SofT-GRPO configurations on a built-in task over several seeds,
with the same budget, evaluated with the paper's protocol (spec 6 and 9).

    python -m benchmarks.learning [--task running-sum|mnns] [--seeds 0-4] [--configs a,b]
        [--steps N] [--workers W] [--runs DIR] [--out FILE] [--set key=value ...]

Each run is the trainer itself (``softgrpo.trainer.train`` on the task's shipped config, plus
the row's settings, the warm-start teacher, the seed and --set), one process per run, W at a
time (default: one per CPU core, each with one torch thread). A task's configurations are the
rows of its table (TASKS: one line per row); a task with several warm-start teachers runs
every row under each (or those the row names). Every run of a (seed, teacher) starts from the
same warm-started weights (the trainer's warm_start_cache under --runs, filled by the first run
of that pair before the others start). A run already finished under --runs is reused, so an interrupted benchmark
picks up where it stopped. Writes FILE: per teacher, the mean and standard error over seeds of
held-out Pass@1 and Pass@32 before and after training in each row's own decoding mode, the
paired differences against GRPO, a table of every decoding mode; FILE with .png: held-out
Pass@1 against step and Pass@k against k.
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
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from benchmarks.run import machine, versions


@dataclass(frozen=True)
class Row:
    """One configuration: TrainConfig settings on top of the task's shipped config. seeds:
    run it on the first N of the benchmark's seeds only (a sweep on a subset); None: all.
    teachers: run it under these warm-start teachers only; None: all of the task's."""

    name: str
    settings: dict
    seeds: int | None = None
    teachers: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Task:
    """A built-in task's benchmark: its shipped config, its rows, the warm-start teachers every
    row runs under (None: the config's own), the default report and what its title says;
    analyse: rows whose soft-step weights benchmarks.soft_weights measures (mnns only)."""

    config: str
    rows: tuple[Row, ...]
    out: Path
    title: str
    teachers: tuple[str | None, ...] = (None,)
    analyse: tuple[str, ...] = ()


# every softgrpo row states its rollout noise clamp (release: the paper's clamped noise;
# exact and token need unclamped noise), so a table does not depend on a shipped default
GRPO = dict(algorithm="grpo", likelihood="release", noise_clamp=[-1.5, 3.0])
RELEASE = dict(algorithm="softgrpo", likelihood="release", noise_clamp=[-1.5, 3.0])
TOKEN = dict(algorithm="softgrpo", likelihood="token", noise_clamp=None)
EXACT = dict(algorithm="softgrpo", likelihood="exact", noise_clamp=None)
# Multiplex Thinking (spec 10) with its defaults: k draws from the unfiltered distribution,
# probability-weighted mix, the filtered (exact) log-prob, the per-draw ratio
MULTIPLEX = dict(algorithm="softgrpo", soft_policy="multiplex")
SWEEP_SEEDS = 2  # the tau / k sweep's subset of seeds
# mnns: the soft rows beyond grpo / token / release run under the teacher that teaches mixes
DISTRIBUTION = ("distribution",)
WEIGHT_SAMPLES = 8  # samples per held-out problem for the soft-weight analysis

TASKS = {
    "running-sum": Task("default", (
        Row("grpo", GRPO),
        Row("release", RELEASE),
        Row("exact", EXACT),
        Row("token", TOKEN),
        Row("token-0.5", {**TOKEN, "conditional_weight": 0.5}),
        Row("multiplex-k3", {**MULTIPLEX, "k": 3}),
        Row("multiplex-k2", {**MULTIPLEX, "k": 2}, SWEEP_SEEDS),
        Row("multiplex-k5", {**MULTIPLEX, "k": 5}, SWEEP_SEEDS),
    ), Path("benchmarks/results/learning-cpu.md"),
        "Learning on the running-sum task: GRPO and SofT-GRPO by soft-row likelihood"),
    "mnns": Task("mnns", (
        Row("grpo", GRPO),
        Row("token", TOKEN),
        Row("release", RELEASE),
        Row("token-tau1-k10", {**TOKEN, "tau": 1.0, "k": 10}, None, DISTRIBUTION),
        Row("token-tau0.5", {**TOKEN, "tau": 0.5}, SWEEP_SEEDS, DISTRIBUTION),
        Row("token-tau1", {**TOKEN, "tau": 1.0}, SWEEP_SEEDS, DISTRIBUTION),
        Row("token-k10", {**TOKEN, "k": 10}, SWEEP_SEEDS, DISTRIBUTION),
        Row("multiplex-k3", {**MULTIPLEX, "k": 3}, None, DISTRIBUTION),
        Row("multiplex-k2", {**MULTIPLEX, "k": 2}, SWEEP_SEEDS, DISTRIBUTION),
        Row("multiplex-k5", {**MULTIPLEX, "k": 5}, SWEEP_SEEDS, DISTRIBUTION),
    ), Path("benchmarks/results/learning-mnns-cpu.md"),
        "Learning on mnns (CoT2's minimum non-negative sum): GRPO and SofT-GRPO",
        teachers=("distribution", "path"), analyse=("token", "token-tau1-k10")),
}
RUNS = Path("runs/learning")

Job = tuple[str, str | None, int]  # (row, teacher, seed)


def _seeds(text: str) -> list[int]:
    """"0-4" or "0,3,7" -> seeds."""
    if "-" in text:
        lo, hi = (int(x) for x in text.split("-"))
        return list(range(lo, hi + 1))
    return [int(x) for x in text.split(",")]


def run_dir(runs: Path, job: Job) -> Path:
    name, teacher, seed = job
    return runs / name / (teacher or "") / f"seed{seed}"


def settings(task: Task, job: Job, steps: int | None, extra: dict[str, str],
             runs: Path) -> dict:
    """The TrainConfig overrides of one run (on top of the task's shipped config)."""
    name, teacher, seed = job
    row = next(r for r in task.rows if r.name == name)
    out = {**row.settings, "seed": seed, "progress": False, "threads": 1,
           "warm_start_cache": str(runs / "warm-start"), "output_dir": str(run_dir(runs, job))}
    if teacher is not None:
        out["warm_start_teacher"] = teacher
    out.update(extra)
    return out if steps is None else {**out, "steps": steps}


def run(config: str, overrides: dict) -> dict:
    """Train one run into overrides["output_dir"] (stdout and stderr into its train.log);
    returns its summary.json. Runs in a worker process."""
    from softgrpo.config import load_config
    from softgrpo.trainer import SUMMARY_FILE, train

    out = Path(overrides["output_dir"])
    if (out / SUMMARY_FILE).is_file():
        return json.loads((out / SUMMARY_FILE).read_text())
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_config(config, overrides)
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


def run_all(task: Task, jobs: list[Job], steps: int, extra: dict[str, str], runs: Path,
            workers: int) -> dict[Job, dict]:
    """Every job, ``workers`` processes at a time, one progress bar over all training steps.
    The first job of each (teacher, seed) goes first: it fills the warm-start cache, and the
    pair's other jobs are queued once it is done, so no warm start is computed twice."""
    first: dict[tuple, Job] = {}
    for job in jobs:
        first.setdefault(job[1:], job)
    later = {key: [j for j in jobs if j[1:] == key and j != lead] for key, lead in first.items()}
    bar = tqdm(total=steps * len(jobs), desc=f"{len(jobs)} runs", file=sys.stderr)
    results = {}
    context = multiprocessing.get_context("spawn")  # fresh interpreters: no shared torch state
    with cf.ProcessPoolExecutor(workers, mp_context=context) as pool:
        def submit(job: Job) -> cf.Future:
            return pool.submit(run, task.config, settings(task, job, steps, extra, runs))

        futures = {submit(job): job for job in first.values()}
        pending = set(futures)
        while pending:
            done, pending = cf.wait(pending, timeout=2.0)
            for future in done:
                job = futures[future]
                results[job] = future.result()  # a failed run raises here
                if first.get(job[1:]) == job:  # its warm start is cached now
                    for other in later[job[1:]]:
                        queued = submit(other)
                        futures[queued] = other
                        pending.add(queued)
            bar.update(sum(_steps_done(run_dir(runs, j)) for j in futures.values()) - bar.n)
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
    return f"{mean:.{digits}f}" if math.isnan(se) else f"{mean:.{digits}f} ± {se:.{digits}f}"


def _own(summary: dict, which: str) -> dict:
    """The evaluation in the run's own decoding mode ("first_eval" or "final_eval")."""
    return summary[which][summary["eval_mode"]]


def _row_seeds(row: Row, seeds: list[int]) -> list[int]:
    return seeds if row.seeds is None else seeds[:row.seeds]


def _teacher_rows(rows: list[Row], teacher: str | None) -> list[Row]:
    return [row for row in rows if row.teachers is None or teacher in row.teachers]


def table(results: dict[Job, dict], rows: list[Row], teacher: str | None,
          seeds: list[int]) -> str:
    """Per row: before / after in its own decoding mode, and the paired difference against
    the grpo row on the seeds both ran."""
    first = _own(results[(rows[0].name, teacher, seeds[0])], "first_eval")
    k = max(int(key.removeprefix("pass@")) for key in first if key.startswith("pass@"))
    paired = any(r.name == "grpo" for r in rows)
    lines = [(f"| configuration | decoding | seeds | held-out Pass@1 before | after | gain | "
              f"seeds improved | Pass@{k} before | after | thinking tokens before | after | "
              f"distinct answers after | wall time s |"
              + (f" Pass@1 after - grpo (paired) | Pass@{k} after - grpo |" if paired else "")),
             "|---|---|---:|" + "---:|" * (12 if paired else 10)]
    for row in rows:
        ss = _row_seeds(row, seeds)
        rs = [results[(row.name, teacher, s)] for s in ss]
        before = [_own(r, "first_eval") for r in rs]
        after = [_own(r, "final_eval") for r in rs]
        gain = [a["pass@1"] - b["pass@1"] for a, b in zip(after, before)]
        cells = [f"| {row.name}", rs[0]["eval_mode"], str(len(ss)),
                 _fmt([b["pass@1"] for b in before]), _fmt([a["pass@1"] for a in after]),
                 _fmt(gain), f"{sum(g > 0 for g in gain)}/{len(gain)}",
                 _fmt([b[f"pass@{k}"] for b in before]), _fmt([a[f"pass@{k}"] for a in after]),
                 _fmt([b["thinking_length"] for b in before], 2),
                 _fmt([a["thinking_length"] for a in after], 2),
                 _fmt([a["distinct_answers"] for a in after], 2),
                 _fmt([r["wall_time_s"] for r in rs], 0)]
        if paired:
            base = [_own(results[("grpo", teacher, s)], "final_eval") for s in ss]
            cells += [_fmt([a[key] - b[key] for a, b in zip(after, base)])
                      if row.name != "grpo" else "" for key in ("pass@1", f"pass@{k}")]
        lines.append(" | ".join(cells) + " |")
    return "\n".join(lines)


def mode_table(results: dict[Job, dict], rows: list[Row], teacher: str | None,
               seeds: list[int]) -> str:
    """Per row and decoding mode: Pass@1 and Pass@k before and after, distinct answers."""
    first = results[(rows[0].name, teacher, seeds[0])]["first_eval"]
    modes = list(first)
    k = max(int(key.removeprefix("pass@")) for key in first[modes[0]] if key.startswith("pass@"))
    lines = [(f"| configuration | decoding | Pass@1 before | after | Pass@{k} before | after | "
             "distinct answers before | after |"), "|---|---|" + "---:|" * 6]
    for row in rows:
        rs = [results[(row.name, teacher, s)] for s in _row_seeds(row, seeds)]
        for mode in modes:
            b = [r["first_eval"][mode] for r in rs]
            a = [r["final_eval"][mode] for r in rs]
            lines.append(" | ".join([
                f"| {row.name}", mode + (" (trained)" if mode == rs[0]["eval_mode"] else ""),
                *(_fmt([x[key] for x in xs]) for key in ("pass@1", f"pass@{k}")
                  for xs in (b, a)),
                _fmt([x["distinct_answers"] for x in b], 2),
                _fmt([x["distinct_answers"] for x in a], 2)]) + " |")
    return "\n".join(lines)


def curves(runs: Path, job: tuple[str, str | None], seeds: list[int], mode: str
           ) -> dict[int, list[float]]:
    """step -> held-out Pass@1 of every seed at that step in decoding ``mode``."""
    from softgrpo import metrics

    out: dict[int, list[float]] = {}
    for seed in seeds:
        for r in metrics.read(run_dir(runs, (*job, seed))):
            if r["kind"] == "eval" and r["mode"] == mode:
                out.setdefault(r["step"], []).append(r["pass@1"])
    return out


def _band(ax, xs: list, values: list[list[float]], **style) -> None:
    stats = [_mean_se(v) for v in values]
    mean = [m for m, _ in stats]
    se = [0.0 if math.isnan(e) else e for _, e in stats]
    line, = ax.plot(xs, mean, **style)
    ax.fill_between(xs, [m - e for m, e in zip(mean, se)], [m + e for m, e in zip(mean, se)],
                    alpha=0.15, color=line.get_color())


def plot(results: dict[Job, dict], task: Task, rows: list[Row], seeds: list[int], runs: Path,
         path: Path) -> None:
    """Per teacher: held-out Pass@1 against step (own decoding mode), and Pass@k against k
    after training (own mode; dashed: the warm start in discrete and soft decoding)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    teachers = task.teachers
    fig, axes = plt.subplots(2, len(teachers), figsize=(7 * len(teachers), 9), squeeze=False)
    for col, teacher in enumerate(teachers):
        label = f", {teacher} teacher" if teacher else ""
        steps_ax, k_ax = axes[0, col], axes[1, col]
        for row in _teacher_rows(rows, teacher):
            ss = _row_seeds(row, seeds)
            mode = results[(row.name, teacher, ss[0])]["eval_mode"]
            points = sorted(curves(runs, (row.name, teacher), ss, mode).items())
            _band(steps_ax, [s for s, _ in points], [v for _, v in points], marker="o",
                  label=f"{row.name} ({mode})")
            after = [_own(results[(row.name, teacher, s)], "final_eval") for s in ss]
            ks = sorted(int(key.removeprefix("pass@")) for key in after[0]
                        if key.startswith("pass@"))
            _band(k_ax, ks, [[a[f"pass@{k}"] for a in after] for k in ks], marker="o",
                  label=f"{row.name} ({mode})")
        start = [results[(rows[0].name, teacher, s)]["first_eval"] for s in seeds]
        for mode in ("discrete", "soft"):
            if mode in start[0]:
                _band(k_ax, ks, [[r[mode][f"pass@{k}"] for r in start] for k in ks],
                      linestyle="--", color="gray" if mode == "discrete" else "black",
                      label=f"warm start ({mode})")
        steps_ax.set(xlabel="step", ylabel="held-out Pass@1",
                     title=f"{task.config}{label}: mean ± s.e. over seeds")
        k_ax.set(xlabel="k", ylabel="held-out Pass@k after training", xscale="log",
                 title=f"Pass@k against k{label}")
        k_ax.set_xticks(ks, [str(k) for k in ks])
        for ax in (steps_ax, k_ax):
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report(results: dict[Job, dict], task: Task, rows: list[Row], seeds: list[int],
           command: str, runs: Path, out: Path, load: tuple[float, float]) -> str:
    png = out.with_suffix(".png")
    plot(results, task, rows, seeds, runs, png)
    any_run = results[(rows[0].name, task.teachers[0], seeds[0])]
    own = _own(any_run, "first_eval")
    defs = "; ".join(f"`{row.name}`: " + ", ".join(f"{k}={v}" for k, v in row.settings.items())
                     + ("" if row.seeds is None else f" (first {row.seeds} seeds)")
                     + ("" if row.teachers is None else f" ({', '.join(row.teachers)} teacher)")
                     for row in rows)
    lines = [
        f"# {task.title}", "",
        (f"`{command}` on {machine('cpu')}; {versions('cpu')}; one torch thread per run. Load "
        f"average (1 min) of this machine: {load[0]:.1f} at the start, {load[1]:.1f} at the end."),
        "",
        (f"Each row: `softgrpo train` on the shipped config `{task.config}` "
         f"({any_run['steps']} steps, the same budget for every row) with the row's settings: "
         f"{defs}. Seeds {', '.join(map(str, seeds))}; a row's runs of one seed (and teacher) "
         "start from the same warm-started weights. Held-out Pass@k: "
         f"{own['problems']} held-out problems x {own['samples']} samples, unbiased "
         "estimator; values are the mean ± standard error over seeds; each algorithm in the "
         "main table decodes as it trains (softgrpo: soft thinking with Gumbel noise; grpo: "
         "discrete sampling); the paired differences take the grpo run of the same seed. Wall "
         "time is the whole run (the first run of a seed also warm-starts) with other runs and "
         "other work on the machine beside it: compare it loosely."), ""]
    for teacher in task.teachers:
        if teacher is not None:
            lines += [f"## Warm-start teacher: {teacher}", ""]
        here = _teacher_rows(rows, teacher)
        lines += [table(results, here, teacher, seeds), "",
                  ("Every decoding mode (soft-no-noise: noise scale 0, greedy: temperature 0, "
                  "one sample; the mode each row trains with is marked):"), "",
                  mode_table(results, here, teacher, seeds), ""]
    lines += [f"![Pass@1 against step, Pass@k against k]({png.name})", ""]
    analysed = [row for row in rows if row.name in task.analyse]
    if analysed:
        lines += weights_section(task, analysed, seeds, runs, out)
    lines += [("Same machine, same seed, same settings: the same metrics.jsonl, bit for bit "
               "(tested). Another CPU (another instruction set, another torch build) rounds "
               "differently, and a tiny model's RL amplifies that: expect other numbers per "
               "seed elsewhere; the means over seeds are what to compare."), ""]
    return "\n".join(lines)


def weights_section(task: Task, rows: list[Row], seeds: list[int], runs: Path,
                    out: Path) -> list[str]:
    """benchmarks.soft_weights on the rows' runs (each row's seeds pooled), per teacher."""
    from benchmarks import soft_weights

    png = out.with_name(out.stem + "-soft-weights.png")
    groups = {f"{row.name}, {teacher} teacher" if teacher else row.name:
              [run_dir(runs, (row.name, teacher, s)) for s in _row_seeds(row, seeds)]
              for teacher in task.teachers for row in _teacher_rows(rows, teacher)}
    results = soft_weights.measure(groups, WEIGHT_SAMPLES, "soft")
    soft_weights.plot(results, png, soft_weights.THRESHOLD)
    return [("What a soft step carries (`benchmarks.soft_weights`: soft decoding with noise, as "
             f"trained, {WEIGHT_SAMPLES} samples per held-out problem, each row's seeds "
             "pooled; before = the warm-started policy, after = the trained one): the weight "
             "on partial sums reachable at that step, on those of an optimal sign choice, and "
             "how many reachable sums a step carries at once:"), "",
            soft_weights.table(results, soft_weights.THRESHOLD), "",
            f"![reachable partial sums per soft step]({png.name})", ""]


def main(argv: list[str] | None = None) -> Path:
    from softgrpo.config import load_config, parse_overrides

    parser = argparse.ArgumentParser(prog="python -m benchmarks.learning",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="running-sum", choices=list(TASKS))
    parser.add_argument("--seeds", default="0-4", help="e.g. 0-4 or 0,3,7 (default 0-4)")
    parser.add_argument("--configs", help="comma-separated rows of the task's table "
                                          "(default: all)")
    parser.add_argument("--steps", type=int, help="training steps (default: the config's)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--runs", type=Path, help="run directories, reused (default "
                                                  "runs/learning/<task>)")
    parser.add_argument("--out", type=Path, help="report (default: the task's, under "
                                                 "benchmarks/results)")
    args, rest = parser.parse_known_args(argv)
    task = TASKS[args.task]
    extra = parse_overrides(rest)
    known = [r.name for r in task.rows]
    names = args.configs.split(",") if args.configs else known
    unknown = [n for n in names if n not in known]
    if unknown:
        parser.error(f"unknown configurations {unknown}; the {args.task} table has {known}")
    rows = [r for r in task.rows if r.name in names]
    seeds = _seeds(args.seeds)
    runs = args.runs or RUNS / args.task
    out = args.out or task.out
    steps = args.steps
    if steps is None:  # the bar needs the count: the shipped config's, or --set's
        steps = load_config(task.config, extra).steps
    jobs = [(row.name, teacher, seed) for teacher in task.teachers for seed in seeds
            for row in _teacher_rows(rows, teacher) if seed in _row_seeds(row, seeds)]
    started, load = time.perf_counter(), os.getloadavg()[0]
    results = run_all(task, jobs, steps, extra, runs, max(1, args.workers))
    command = "python -m benchmarks.learning " + " ".join(argv if argv is not None
                                                          else sys.argv[1:])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report(results, task, rows, seeds, command.strip(), runs, out,
                          (load, os.getloadavg()[0])))
    print(f"{out} ({time.perf_counter() - started:.0f} s)")
    return out


if __name__ == "__main__":
    main()
