"""Benchmark table: every op against eager PyTorch written the way the authors' release does it.

    python -m benchmarks.run                      # CPU shapes, table to stdout
    python -m benchmarks.run --device cuda --out benchmarks/results/H100.md
    python -m benchmarks.run --only logprob       # modules whose name contains "logprob"
    python -m benchmarks.run --threads 1          # one CPU thread (steadier on a busy machine)

Each row: median wall time over repetitions and peak memory beyond the inputs, for ours and
for eager in the same process, and their ratios (eager / ours: > 1 means ours is better).
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib
import os
import pkgutil
import platform
import subprocess
import sys
from pathlib import Path

import torch
from tqdm import tqdm

import benchmarks
from benchmarks.common import Case, median_ms, peak_bytes


def discover(only: str | None) -> list:
    names = sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__)
                   if m.name.startswith("bench_") and (only is None or only in m.name))
    return [importlib.import_module(f"benchmarks.{n}") for n in names]


def machine(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def versions(device: str) -> str:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    text = f"torch {torch.__version__}, triton {triton_version}, Python {platform.python_version()}"
    if device == "cuda":
        query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        try:
            driver = subprocess.run(query, capture_output=True, text=True,
                                    check=True).stdout.split()[0]
        except (OSError, subprocess.CalledProcessError, IndexError):
            driver = "unknown"
        text += f", CUDA {torch.version.cuda} (torch build), driver {driver}"
    return text


def measure(case: Case, device: str, reps: int) -> dict:
    row = {"op": case.op, "shape": case.shape}
    for name in ("eager", "ours"):
        run = functools.partial(getattr(case, name), case.setup())
        row[f"{name}_ms"] = median_ms(run, device, reps=reps)
        row[f"{name}_mib"] = peak_bytes(run, device) / 2**20
        del run
        gc.collect()
    return row


def memory_ratio(eager_mib: float, ours_mib: float) -> str:
    """eager / ours; below 1 MiB the measurement is noise, so the ratio is a bound or n/a."""
    if eager_mib < 1.0:
        return "n/a"
    if ours_mib < 1.0:
        return f"> {eager_mib:.0f}x"
    return f"{eager_mib / ours_mib:.1f}x"


def table(rows: list[dict], device: str, load: tuple[float, float]) -> str:
    lines = [
        f"Device: {machine(device)}; {versions(device)}.",
        (f"Load average (1 min) of this machine: {load[0]:.1f} at the start, {load[1]:.1f} at "
         f"the end, on {os.cpu_count()} CPUs."),
        "On CPU, ours is the pure-torch reference (the Triton kernels run on CUDA). "
        "Times are medians; memory is the peak allocated beyond the inputs "
        + ("(torch.cuda.max_memory_allocated)." if device == "cuda"
           else "(resident set sampled every 0.5 ms)."),
        "",
        "| op | shape | eager ms | ours ms | speed-up | eager peak MiB | ours peak MiB | memory ratio |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['op']} | {r['shape']} | {r['eager_ms']:.2f} | {r['ours_ms']:.2f} "
            f"| {r['eager_ms'] / r['ours_ms']:.1f}x | {r['eager_mib']:.1f} | {r['ours_mib']:.1f} "
            f"| {memory_ratio(r['eager_mib'], r['ours_mib'])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--only", help="run the modules whose name contains this")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = [c for module in discover(args.only) for c in module.cases(args.device)]
    load = os.getloadavg()[0]
    rows = [measure(c, args.device, args.reps)
            for c in tqdm(cases, desc="benchmarks", file=sys.stderr)]
    text = table(rows, args.device, (load, os.getloadavg()[0]))
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
