"""SoftGRPOTrainer(use_vllm=True): TRL's colocate mode on softgrpo.adapters.vllm, checked in a
fresh interpreter against the Hugging Face path under both soft policies (see
trl_vllm_check.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")


@pytest.mark.parametrize("policy", ["gumbel", "multiplex"])
def test_trl_colocated_vllm_matches_hf_path(checkpoints, tmp_path, policy):
    script = Path(__file__).with_name("trl_vllm_check.py")
    folders = [str(script.parent), str(script.parent.parent)]
    run = subprocess.run([sys.executable, str(script), str(checkpoints["qwen2"][0]),
                          str(tmp_path), policy], check=False, capture_output=True, text=True,
                         timeout=600, env={**os.environ, "PYTHONPATH": ":".join(folders)})
    assert run.returncode == 0 and "OK" in run.stdout.splitlines(), run.stderr[-4000:]
