"""Ahead-of-time compile check: every Triton kernel compiled for sm_80 and sm_90 through its
real launcher, on a machine without a GPU.

    python -m benchmarks.compile_check [--out FILE] [--only NAME] [--jobs N] [--fresh]
    python -m benchmarks.compile_check --triton-versions 3.6 3.9 --out FILE

Every launcher in softgrpo.kernels runs on meta tensors (shape, dtype, strides and storage
offsets, no data) of the shapes that matter (CASES), with each ``kernel[grid](...)`` recorded
instead of launched. So the grid, constexprs, num_warps and options are the ones the launcher
computes; soft_sample's chunking reads the target card's multiprocessor count, and
data-dependent host steps (``nonzero``) see every element as nonzero. Triton's own binder then
specialises the recorded arguments for the target (types, 16-byte alignment, integers
divisible by 16 or equal to 1) and ``triton.compile`` runs the real pipeline down to ptxas:
registers and spills from ptxas' report, shared memory from the compiled kernel.

Distinct compiles run once each, in a process pool, and their results are cached (by Triton
version, target, the kernel's source hash and its specialisation) in
``~/.cache/softgrpo/compile_check.json``; ``--fresh`` ignores the cache.
``--triton-versions`` runs the check under each listed Triton version: the running one in this
process, others in a virtual environment made once under ``~/.cache/softgrpo`` (the same torch,
``triton==X.Y.*``, this repository editable), and writes one report.

Exits 1 on a compile error, a spill, shared memory beyond the target's limit per program, or a
launch that leaves ``num_warps`` or ``enable_fp_fusion`` to Triton's default.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import importlib
import io
import json
import math
import multiprocessing
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import torch

REPO = Path(__file__).resolve().parent.parent
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "softgrpo"
KERNEL_MODULES = ("sampling", "multiplex", "embedding", "logprob", "fused_linear")
REQUIRED_OPTIONS = ("num_warps", "enable_fp_fusion")  # every launch sets these explicitly


@dataclass(frozen=True)
class Target:
    """A compile target and the card whose limits the check applies (datasheet values)."""

    name: str
    capability: int
    card: str
    sms: int  # multiprocessors: soft_sample's launcher sizes its vocabulary chunks by them
    shared_per_program: int  # the most shared memory one program may use (opt-in maximum)
    shared_per_sm: int
    registers_per_sm: int = 65536
    warps_per_sm: int = 64
    programs_per_sm: int = 32


TARGETS = (Target("sm_80", 80, "A100", 108, 163 * 1024, 164 * 1024),
           Target("sm_90", 90, "H100/H200", 132, 227 * 1024, 228 * 1024))


# ---- the cases: each runs one launcher on meta tensors ----------------------------------------
def meta(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A tensor with shape, dtype and strides but no data (device "meta")."""
    return torch.empty(shape, dtype=dtype, device="meta")


def _short(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


FLOATS = (torch.bfloat16, torch.float16, torch.float32)
VOCABS = (151936, 128256)  # Qwen2 / Llama-3 vocabularies
HIDDEN = (1536, 4096)
LOGPROB_OPTIONS = dict(temperature=1.0, clamp_lo=-1.5, clamp_hi=3.0, mask_threshold=-3.0,
                       eps=1e-6, reduction="mean", likelihood="release", conditional_weight=0.0,
                       noise_scale=1.0)


def _sampling_cases() -> Iterator[tuple[str, Callable[[], Any]]]:
    from softgrpo.kernels import sampling

    def run(rows: int, vocab: int, dtype: torch.dtype, k: int, discrete_k: int,
            temperature: float, row_stride: int) -> None:
        logits = meta(rows, row_stride, dtype=dtype)[:, :vocab]
        keys = meta(rows, dtype=torch.int64)
        sampling.soft_sample(logits, k, temperature, 0.95, 0.1, 1.0, keys, keys,
                             meta(rows, dtype=torch.bool), -1.5, 3.0, discrete_k, 0.95, -8.0,
                             1e-6)

    settings = [(dtype, 5, 5, 1.0) for dtype in FLOATS]
    settings += [(torch.bfloat16, 5, 5, 0.7), (torch.bfloat16, 5, 5, 0.0),  # T != 1, greedy
                 (torch.float32, sampling.MAX_KMAX, 5, 0.6)]
    settings += [(torch.bfloat16, 5, kmax, 1.0) for kmax in (16, 32, 64, sampling.MAX_KMAX)]
    for rows in (1, 64, 16384):
        for vocab in VOCABS:
            for dtype, k, discrete_k, temperature in settings:
                label = (f"soft_sample B={rows} V={vocab} {_short(dtype)} k={k} "
                         f"discrete_k={discrete_k} T={temperature}")
                yield label, functools.partial(run, rows, vocab, dtype, k, discrete_k,
                                               temperature, vocab)
    yield ("soft_sample B=64 V=151936 bf16 k=5, rows strided by V + 8",
           functools.partial(run, 64, 151936, torch.bfloat16, 5, 5, 1.0, 151936 + 8))
    for rows in (1, 16384):  # GPT-2's vocabulary: V not a multiple of 16
        yield (f"soft_sample B={rows} V=50257 bf16 k=5",
               functools.partial(run, rows, 50257, torch.bfloat16, 5, 5, 1.0, 50257))


def _multiplex_cases() -> Iterator[tuple[str, Callable[[], Any]]]:
    from softgrpo.kernels import multiplex, sampling
    from softgrpo.ops.multiplex import MAX_DRAWS

    def run(rows: int, vocab: int, dtype: torch.dtype, k: int, top_k: int, temperature: float,
            row_stride: int) -> None:
        logits = meta(rows, row_stride, dtype=dtype)[:, :vocab]
        keys = meta(rows, dtype=torch.int64)
        top_p = 0.95 if top_k else 1.0
        multiplex.multiplex_sample(logits, k, temperature, top_k, top_p, False, keys, keys)

    settings = [(dtype, 3, 0, 1.0) for dtype in FLOATS]  # the release's: no filter
    settings += [(torch.bfloat16, 3, 0, 0.7), (torch.bfloat16, 2, 0, 1.0),
                 (torch.bfloat16, 8, 0, 1.0), (torch.float32, MAX_DRAWS, 0, 1.0)]
    settings += [(torch.bfloat16, 3, top_k, 1.0)
                 for top_k in (5, 16, 50, sampling.MAX_KMAX)]
    settings += [(torch.float32, MAX_DRAWS, sampling.MAX_KMAX, 0.6)]
    for rows in (1, 64, 16384):
        for vocab in VOCABS:
            for dtype, k, top_k, temperature in settings:
                label = (f"multiplex_sample B={rows} V={vocab} {_short(dtype)} k={k} "
                         f"top_k={top_k} T={temperature}")
                yield label, functools.partial(run, rows, vocab, dtype, k, top_k, temperature,
                                               vocab)
    for top_k in (0, 5):
        yield (f"multiplex_sample B=64 V=151936 bf16 k=3 top_k={top_k}, rows strided by V + 8",
               functools.partial(run, 64, 151936, torch.bfloat16, 3, top_k, 1.0, 151936 + 8))
        yield (f"multiplex_sample B=16384 V=50257 bf16 k=3 top_k={top_k}",
               functools.partial(run, 16384, 50257, torch.bfloat16, 3, top_k, 1.0, 50257))


def _embedding_cases() -> Iterator[tuple[str, Callable[[], Any]]]:
    from softgrpo.kernels import embedding

    def run(n: int, hidden: int, vocab: int, dtype: torch.dtype, ids_dtype: torch.dtype) -> None:
        table, ids = meta(vocab, hidden, dtype=dtype), meta(n, 5, dtype=ids_dtype)
        y, grad = meta(n, 5), meta(n, hidden, dtype=dtype)
        weights = embedding.gumbel_softmax_weights(y, 0.1, ids)
        embedding.gumbel_softmax_weights_backward(y, weights, 0.1, ids)
        embedding.gumbel_softmax_weights_backward(y, embedding.gumbel_softmax_weights(y, 0.1, None),
                                                  0.1, None)
        embedding.soft_embedding(table, ids, weights)
        embedding.soft_embedding_backward(grad, table, ids, weights)
        embedding.soft_token_embedding(table, ids, y, 0.1)
        embedding.soft_token_embedding_backward(grad, table, ids, y, 0.1)

    for n in (1, 16384):
        for hidden in HIDDEN:
            for vocab in VOCABS:
                for dtype in FLOATS:
                    yield (f"embeddings N={n} H={hidden} V={vocab} {_short(dtype)}",
                           functools.partial(run, n, hidden, vocab, dtype, torch.int64))
    yield ("embeddings N=16384 H=4096 V=151936 bf16 int32 ids",
           functools.partial(run, 16384, 4096, 151936, torch.bfloat16, torch.int32))


def _logprob_cases() -> Iterator[tuple[str, Callable[[], Any]]]:
    from softgrpo.kernels import logprob

    def run(n: int, vocab: int, dtype: torch.dtype, likelihood: str, reduction: str) -> None:
        args = (meta(n, vocab, dtype=dtype), meta(n, 5, dtype=torch.int64), meta(n, 5),
                *dict(LOGPROB_OPTIONS, likelihood=likelihood, reduction=reduction).values())
        logprob.soft_logprob(*args)
        logprob.soft_logprob_backward(meta(n), *args)

    settings = [(dtype, "release", "mean") for dtype in FLOATS]
    settings += [(torch.bfloat16, "release", "sum"), (torch.bfloat16, "exact", "mean"),
                 (torch.bfloat16, "token", "mean")]
    for n in (1, 16384):  # 16384 x 151936: N * V >= 2**31
        for vocab in VOCABS:
            for dtype, likelihood, reduction in settings:
                yield (f"soft_logprob N={n} V={vocab} {_short(dtype)} {likelihood} {reduction}",
                       functools.partial(run, n, vocab, dtype, likelihood, reduction))


def _fused_linear_cases() -> Iterator[tuple[str, Callable[[], Any]]]:
    from softgrpo.kernels import fused_linear
    from softgrpo.reference.fused_linear import default_chunk_size

    def run(n: int, hidden: int, vocab: int, dtype: torch.dtype, bias: bool) -> None:
        args = (meta(n, hidden, dtype=dtype), meta(vocab, hidden, dtype=dtype),
                meta(vocab, dtype=dtype) if bias else None, meta(n, 5, dtype=torch.int64),
                meta(n, 5))
        options = (*LOGPROB_OPTIONS.values(), default_chunk_size(n, vocab))
        _, lse = fused_linear.soft_logprob_from_hidden(*args, *options)
        fused_linear.soft_logprob_from_hidden_backward(meta(n), *args, lse, *options)

    def run_multiplex(n: int, hidden: int, vocab: int, dtype: torch.dtype, bias: bool,
                      k: int, kept: int) -> None:
        args = (meta(n, hidden, dtype=dtype), meta(vocab, hidden, dtype=dtype),
                meta(vocab, dtype=dtype) if bias else None, meta(n, k, dtype=torch.int64),
                meta(n, k), meta(n, kept, dtype=torch.int64))
        options = (1.0, default_chunk_size(n, vocab))
        _, lse, zk = fused_linear.multiplex_logprob_from_hidden(*args, *options)
        fused_linear.multiplex_logprob_from_hidden_backward(meta(n, k), *args, lse, zk, *options)

    settings = [(dtype, False) for dtype in FLOATS] + [(torch.bfloat16, True)]
    for n in (1, 16384):
        for hidden in HIDDEN:
            for vocab in VOCABS:
                for dtype, bias in settings:
                    label = (f"soft_logprob_from_hidden N={n} H={hidden} V={vocab} "
                             f"{_short(dtype)}{' bias' if bias else ''}")
                    yield label, functools.partial(run, n, hidden, vocab, dtype, bias)
                    for k, kept in ((3, 0), (3, 50), (8, 128)):
                        label = (f"multiplex_logprob_from_hidden N={n} H={hidden} V={vocab} "
                                 f"{_short(dtype)}{' bias' if bias else ''} k={k} kept={kept}")
                        yield label, functools.partial(run_multiplex, n, hidden, vocab, dtype,
                                                       bias, k, kept)


CASES = (_sampling_cases, _multiplex_cases, _embedding_cases, _logprob_cases, _fused_linear_cases)


# ---- recording the launches --------------------------------------------------------------------
@dataclass
class Launch:
    """One ``kernel[grid](*args, **kwargs)`` call a launcher made, and the case that made it."""

    kernel: Any  # the triton JITFunction
    args: tuple
    kwargs: dict
    case: str


class _Recorder:
    """Stands in for a kernel: ``kernel[grid](*args, **kwargs)`` records a Launch."""

    def __init__(self, kernel: Any, launches: list[Launch], case: list[str]) -> None:
        self.kernel, self.launches, self.case = kernel, launches, case

    def __getitem__(self, grid: tuple) -> Callable[..., None]:
        def record(*args: Any, **kwargs: Any) -> None:
            self.launches.append(Launch(self.kernel, args, kwargs, self.case[0]))
        return record


def record_launches(target: Target) -> list[Launch]:
    """Run every case's launchers on meta tensors and return their kernel launches."""
    from torch.fx.experimental import _config as fx_config
    from triton.runtime.jit import JITFunction

    from softgrpo.kernels import sampling

    if not hasattr(fx_config, "meta_nonzero_assume_all_nonzero"):
        raise RuntimeError(f"torch {torch.__version__} cannot run nonzero on meta tensors")
    interpreted = not isinstance(sampling._row_kernel, JITFunction)
    if interpreted:
        raise RuntimeError("the kernels were imported under TRITON_INTERPRET=1: run the compile "
                           "check in a process without it")
    modules = [importlib.import_module(f"softgrpo.kernels.{m}") for m in KERNEL_MODULES]
    launches: list[Launch] = []
    case = [""]
    with contextlib.ExitStack() as stack:
        for module in modules:
            for name, obj in vars(module).items():
                if isinstance(obj, JITFunction):
                    stack.enter_context(mock.patch.object(module, name,
                                                          _Recorder(obj, launches, case)))
        stack.enter_context(mock.patch.object(sampling, "_sm_count", lambda device: target.sms))
        stack.enter_context(mock.patch.object(fx_config, "meta_nonzero_assume_all_nonzero",
                                              True))
        for cases in CASES:
            for label, run in cases():
                case[0] = label
                run()
    return launches


# ---- specialising and compiling ----------------------------------------------------------------
@dataclass
class Compile:
    """One distinct compile: a kernel specialised for a target, and the cases that need it."""

    module: str
    kernel: str
    target: Target
    signature: dict
    constexprs: dict
    attrs: dict
    options: dict
    features: dict  # what identifies this specialisation, for the table
    key: str
    missing: list[str]  # launch options left to Triton's default (REQUIRED_OPTIONS)
    cases: set[str] = field(default_factory=set)
    result: dict = field(default_factory=dict)


def _features(fn: Any, signature: dict, constexprs: dict, attrs: dict,
              options: Any) -> dict[str, str]:
    """Readable specialisation: constexpr values, pointer dtypes, integers divisible by 16."""
    out = {}
    for (index, *_), value in sorted(constexprs.items()):
        out[fn.arg_names[index]] = str(value)
    for name, kind in signature.items():
        if kind.startswith("*"):
            out[name] = kind[1:]
    for (index, *_), spec in sorted(attrs.items()):
        name = fn.arg_names[index]
        if not signature[name].startswith("*") and ["tt.divisibility", 16] in map(list, spec):
            out[name] = "%16"
    out["num_warps"] = str(options.num_warps)
    out["fp_fusion"] = str(options.enable_fp_fusion)
    if options.maxnreg is not None:
        out["maxnreg"] = str(options.maxnreg)
    return out


def specialise(launch: Launch, target: Target, backend: Any) -> Compile:
    """What triton.compile would be given for this launch on this target."""
    import triton
    from triton.runtime.jit import create_function_from_signature

    fn = launch.kernel
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*launch.args, **launch.kwargs)
    parsed, signature, constexprs, attrs = fn._pack_args(backend, launch.kwargs, bound,
                                                         specialization, options)
    options = parsed.__dict__
    key = hashlib.sha256(repr((triton.__version__, target.capability, fn.cache_key,
                               sorted(signature.items()), sorted(constexprs.items()),
                               sorted(attrs.items()), sorted(options.items()))).encode())
    return Compile(fn.fn.__module__, fn.__name__, target, signature, constexprs, attrs, options,
                   _features(fn, signature, constexprs, attrs, parsed), key.hexdigest(),
                   [o for o in REQUIRED_OPTIONS if o not in launch.kwargs])


PTXAS_USED = re.compile(r"Used (\d+) registers")
PTXAS_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, "
                         r"(\d+) bytes spill loads")


def parse_ptxas(log: str) -> dict[str, int]:
    """Registers, stack frame and spill bytes from ptxas' verbose report of one kernel."""
    used, frame = PTXAS_USED.search(log), PTXAS_FRAME.search(log)
    if used is None or frame is None:
        raise ValueError(f"no register report in the ptxas log:\n{log}")
    stack, stores, loads = map(int, frame.groups())
    return dict(registers=int(used.group(1)), stack=stack, spill_stores=stores,
                spill_loads=loads)


def _compile(job: tuple) -> dict[str, Any]:
    """Worker: compile one specialised kernel; its ptxas report and shared memory."""
    module, name, capability, signature, constexprs, attrs, options = job
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = getattr(importlib.import_module(module), name)
    knobs.nvidia.dump_ptxas_log = True  # ptxas -v's report, printed on every compile
    knobs.compilation.always_compile = True  # a cache hit would print no report
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):
            kernel = triton.compile(ASTSource(fn, signature, constexprs, attrs),
                                    target=GPUTarget("cuda", capability, 32), options=options)
        result = parse_ptxas(log.getvalue())
    except Exception as e:  # noqa: BLE001 (a compile error is a result: reported, exit 1)
        return dict(error=f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}")
    return dict(result, shared=kernel.metadata.shared)


def _worker_init(cache_dir: str) -> None:
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ["TRITON_CACHE_DIR"] = cache_dir  # Triton's artifacts: thrown away afterwards


def programs_per_sm(target: Target, num_warps: int, registers: int, shared: int) -> int:
    """Resident programs per SM allowed by warps, registers (allocated per warp in 256s)
    and shared memory."""
    per_warp = math.ceil(registers * 32 / 256) * 256
    limits = [target.programs_per_sm, target.warps_per_sm // num_warps,
              target.registers_per_sm // (per_warp * num_warps)]
    if shared:
        limits.append(target.shared_per_sm // shared)
    return min(limits)


def verdict(compile_: Compile) -> str:
    """'ok', or why this compile fails the check."""
    r = compile_.result
    problems = [f"launch leaves {', '.join(compile_.missing)} to Triton's default"
                ] if compile_.missing else []
    if "error" in r:
        return "; ".join([*problems, "error: " + r["error"]])
    if r["spill_stores"] or r["spill_loads"]:
        problems.append("spills")
    if r["shared"] > compile_.target.shared_per_program:
        problems.append(f"shared memory over {compile_.target.shared_per_program} bytes")
    return "; ".join(problems) or "ok"


def run_check(only: str | None, jobs: int, fresh: bool, log: Callable[[str], None]) -> list[dict]:
    """Record, specialise and compile for every target; one row per distinct compile."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend

    cache_file = CACHE_DIR / "compile_check.json"
    cache = {} if fresh or not cache_file.exists() else json.loads(cache_file.read_text())
    compiles: dict[str, Compile] = {}
    for target in TARGETS:
        backend = make_backend(GPUTarget("cuda", target.capability, 32))
        launches = record_launches(target)
        for launch in launches:
            if only and only not in launch.kernel.__name__:
                continue
            c = specialise(launch, target, backend)
            compiles.setdefault(c.key, c).cases.add(launch.case)
    todo = [c for c in compiles.values() if c.key not in cache]
    log(f"{len(compiles)} distinct compiles, {len(compiles) - len(todo)} known, "
        f"compiling {len(todo)} with {jobs} processes")
    if todo:
        with tempfile.TemporaryDirectory() as tmp, ProcessPoolExecutor(
                jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init,
                initargs=(tmp,)) as pool:
            work = [(c.module, c.kernel, c.target.capability, c.signature, c.constexprs,
                     c.attrs, c.options) for c in todo]
            for c, result in zip(todo, pool.map(_compile, work)):
                cache[c.key] = result
    for c in compiles.values():
        c.result = cache[c.key]
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    cache_file.write_text(json.dumps(cache))
    return [row(c) for c in compiles.values()]


def row(c: Compile) -> dict[str, Any]:
    """One compile as a JSON-able report row."""
    r = c.result
    ok = "error" not in r
    return dict(kernel=c.kernel, module=c.module, target=c.target.name, features=c.features,
                cases=sorted(c.cases), verdict=verdict(c), **r,
                programs_per_sm=programs_per_sm(c.target, int(c.features["num_warps"]),
                                                r["registers"], r["shared"]) if ok else None)


# ---- the report --------------------------------------------------------------------------------
def _worst(rows: list[dict], size: Callable[[dict], int], fmt: str) -> str:
    """The row with the largest size, as fmt (row fields) plus where; "none" if all are 0."""
    top = max(rows, key=size, default=None)
    if top is None or size(top) == 0:
        return "none"
    return f"{fmt.format(**top)} ({top['kernel']}, {top['target']})"


def _variant(features: dict, fixed: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in features.items() if fixed.get(k) != v) or "-"


def summary(runs: list[dict]) -> list[str]:
    """A markdown table: one row per Triton version, its worst cases."""
    lines = [("| triton | machine | kernels | distinct compiles | failures | most registers | "
              "largest spill (st/ld bytes) | most shared memory (bytes) | wall time |"),
             "|---|---|---:|---:|---:|---|---|---|---:|"]
    for run in runs:
        rows = [r for r in run["rows"] if "error" not in r]
        spill = _worst(rows, lambda r: r["spill_stores"] + r["spill_loads"],
                       "{spill_stores}/{spill_loads}")
        lines.append(
            f"| {run['triton']} | {run['machine']} | {len({r['kernel'] for r in run['rows']})} "
            f"| {len(run['rows'])} | {sum(r['verdict'] != 'ok' for r in run['rows'])} "
            f"| {_worst(rows, lambda r: r['registers'], '{registers}')} | {spill} "
            f"| {_worst(rows, lambda r: r['shared'], '{shared}')} | {run['wall_s']:.0f} s |")
    return lines


def report(runs: list[dict]) -> str:
    """Markdown: the summary, then a table per kernel."""
    lines = ["# Compile check: every Triton kernel for sm_80 and sm_90",
             "",
             "`python -m benchmarks.compile_check` (see its docstring). Targets: "
             + "; ".join(f"{t.name} ({t.card}: {t.sms} SMs, {t.shared_per_program // 1024} KiB "
                         f"shared memory per program)" for t in TARGETS) + ".",
             "",
             *summary(runs)]
    kernels: dict[str, list[dict]] = {}
    for run in runs:
        for r in run["rows"]:
            kernels.setdefault(r["kernel"], []).append(dict(r, triton=run["triton"]))
    for name, rows in kernels.items():
        keys = {k for r in rows for k in r["features"]}
        fixed = {k: rows[0]["features"].get(k) for k in keys
                 if len({r["features"].get(k) for r in rows}) == 1}
        lines += ["", f"## {name} ({rows[0]['module']})", "",
                  "Every variant: " + " ".join(f"{k}={v}" for k, v in sorted(fixed.items())),
                  "",
                  ("| variant | cases (first) | triton | target | registers | spill st/ld | "
                   "shared | programs/SM | result |"),
                  "|---|---|---|---|---:|---:|---:|---:|---|"]
        rows.sort(key=lambda r: (_variant(r["features"], fixed), r["triton"], r["target"]))
        for r in rows:
            ok = "error" not in r
            lines.append(
                f"| {_variant(r['features'], fixed)} | {len(r['cases'])} ({r['cases'][0]}) "
                f"| {r['triton']} | {r['target']} "
                + (f"| {r['registers']} | {r['spill_stores']}/{r['spill_loads']} | {r['shared']} "
                   f"| {r['programs_per_sm']} " if ok else "| | | | ")
                + f"| {r['verdict']} |")
    return "\n".join(lines) + "\n"


# ---- other Triton versions ---------------------------------------------------------------------
def _venv_python(version: str) -> Path:
    """Python of a virtual environment with triton==version.* and this repository (made once)."""
    venv = CACHE_DIR / f"triton-{version}"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        torch_pin = f"torch=={torch.__version__.split('+')[0]}"
        subprocess.run([str(python), "-m", "pip", "install", "-q", torch_pin,
                        f"triton=={version}.*", "-e", str(REPO)], check=True)
    return python


def _run_in(version: str, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run.json"
        command = [str(_venv_python(version)), "-m", "benchmarks.compile_check", "--json",
                   str(out), "--jobs", str(args.jobs)] + (["--only", args.only] if args.only
                                                          else []) + (["--fresh"] if args.fresh
                                                                      else [])
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        done = subprocess.run(command, cwd=REPO, env=env, check=False)
        if not out.exists():
            raise RuntimeError(f"the check under triton {version} failed ({done.returncode})")
        return json.loads(out.read_text())[0]


def _run_here(args: argparse.Namespace) -> dict:
    import triton

    machine = (f"{platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f} "
               "at start")
    start = time.perf_counter()
    rows = run_check(args.only, args.jobs, args.fresh,
                     lambda msg: print(f"[triton {triton.__version__}] {msg}", file=sys.stderr))
    return dict(triton=triton.__version__, rows=rows, wall_s=time.perf_counter() - start,
                machine=machine)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the markdown report here too")
    parser.add_argument("--json", type=Path, help="write the raw results here")
    parser.add_argument("--only", help="compile only the kernels whose name contains this")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--fresh", action="store_true", help="ignore the results cache")
    parser.add_argument("--triton-versions", nargs="+", metavar="X.Y",
                        help="run under each of these Triton versions (default: the installed)")
    args = parser.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)  # before the kernels are first imported
    import triton

    here = ".".join(triton.__version__.split(".")[:2])
    runs = [_run_here(args) if v == here else _run_in(v, args)
            for v in (args.triton_versions or [here])]
    print("\n".join(summary(runs)))
    for run in runs:
        for r in run["rows"]:
            if r["verdict"] != "ok":
                print(f"FAILED triton {run['triton']} {r['target']} {r['kernel']} "
                      f"{r['features']} ({r['cases'][0]}): {r['verdict']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report(runs))
    if args.json:
        args.json.write_text(json.dumps(runs))
    return int(any(r["verdict"] != "ok" for run in runs for r in run["rows"]))


if __name__ == "__main__":
    sys.exit(main())
