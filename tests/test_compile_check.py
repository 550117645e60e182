"""benchmarks/compile_check.py: its verdicts, report and one real run. The run is a subprocess:
the check needs Triton's JIT, and this suite runs the kernels under TRITON_INTERPRET=1."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import compile_check as cc

SM90 = next(t for t in cc.TARGETS if t.name == "sm_90")
SPILLING_LOG = """ptxas info    : Compiling entry function '_merge_kernel' for 'sm_90a'
ptxas info    : Function properties for _merge_kernel
    128 bytes stack frame, 132 bytes spill stores, 128 bytes spill loads
ptxas info    : Used 128 registers, used 1 barriers, 128 bytes cumulative stack size
"""


def test_parse_ptxas():
    assert cc.parse_ptxas(SPILLING_LOG) == dict(registers=128, stack=128, spill_stores=132,
                                                spill_loads=128)
    with pytest.raises(ValueError, match="no register report"):
        cc.parse_ptxas("ptxas fatal   : Unresolved extern function")


def test_programs_per_sm():
    assert cc.programs_per_sm(SM90, num_warps=8, registers=80, shared=128) == 3  # registers
    assert cc.programs_per_sm(SM90, num_warps=16, registers=128, shared=2048) == 1
    assert cc.programs_per_sm(SM90, num_warps=4, registers=32, shared=0) == 16  # warps
    assert cc.programs_per_sm(SM90, num_warps=4, registers=32, shared=100 * 1024) == 2


def compile_with(result, missing=()):
    return cc.Compile("m", "_k", SM90, {}, {}, {}, {}, {"num_warps": "4"}, "key",
                      list(missing), result=result)


def test_verdicts():
    clean = dict(registers=40, stack=0, spill_stores=0, spill_loads=0, shared=64)
    assert cc.verdict(compile_with(clean)) == "ok"
    assert cc.verdict(compile_with(dict(clean, spill_loads=4))) == "spills"
    assert "shared memory" in cc.verdict(compile_with(dict(clean, shared=228 * 1024)))
    assert cc.verdict(compile_with(dict(error="PTXASError: boom"))) == "error: PTXASError: boom"
    assert "enable_fp_fusion to Triton's default" in cc.verdict(
        compile_with(clean, missing=["enable_fp_fusion"]))


def test_report_summarises_each_version_and_tables_each_kernel():
    row = dict(kernel="_k", module="m", target="sm_90", cases=["case a"], verdict="ok",
               registers=40, stack=0, spill_stores=0, spill_loads=0, shared=64,
               programs_per_sm=12)
    runs = [dict(triton=v, machine="x86_64, 2 CPUs, load 1.0", wall_s=1.0,
                 rows=[dict(row, features={"KMAX": "8", "num_warps": "4"}),
                       dict(row, features={"KMAX": "128", "num_warps": "4"}, registers=96)])
            for v in ("3.6.0", "3.9.0")]
    text = cc.report(runs)
    assert "| 3.6.0 | x86_64, 2 CPUs, load 1.0 | 1 | 2 | 0 | 96 (_k, sm_90) | none |" in text
    assert "## _k (m)" in text and "Every variant: num_warps=4" in text
    assert text.count("| KMAX=128 |") == 2  # one row per Triton version


def test_one_kernel_compiles_for_both_targets(tmp_path):
    out = tmp_path / "runs.json"
    env = dict(os.environ, TRITON_INTERPRET="1", XDG_CACHE_HOME=str(tmp_path))  # it drops it
    done = subprocess.run([sys.executable, "-m", "benchmarks.compile_check", "--only",
                           "_weights_bwd_kernel", "--jobs", "2", "--json", str(out)],
                          cwd=Path(__file__).parent.parent, env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())[0]["rows"]
    assert {r["target"] for r in rows} == {"sm_80", "sm_90"}
    assert all(r["verdict"] == "ok" and r["registers"] > 0 for r in rows)
    assert {r["features"]["fp_fusion"] for r in rows} == {"True"}
