"""The adapter with vLLM's default process layout (engine core and worker in their own
processes), checked in a fresh interpreter: see multiprocess_check.py."""

import os
import subprocess
import sys
from pathlib import Path


def test_engine_in_separate_processes(checkpoints):
    script = Path(__file__).with_name("multiprocess_check.py")
    folders = [str(script.parent), str(script.parent.parent)]
    run = subprocess.run([sys.executable, str(script), str(checkpoints["qwen2"][0]),
                          str(checkpoints["qwen2_other"][0])], check=False, capture_output=True,
                         text=True, timeout=400, env={**os.environ, "PYTHONPATH": ":".join(folders)})
    assert run.returncode == 0 and "OK" in run.stdout.splitlines(), run.stderr[-4000:]
