"""SoftGRPOTrainer data parallel for real: two processes under ``accelerate launch`` on CPU
(gloo) against one process on the same global batch (trl_distributed_check.py)."""

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("trl")

from hf_models import model_and_tokenizer

HERE = Path(__file__).parent
SCRIPT = HERE / "trl_distributed_check.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(command: list[str], tmp_path: Path, name: str, per_device: int) -> dict:
    result = tmp_path / f"{name}.pt"
    env = {**os.environ, "PYTHONPATH": str(HERE), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([*command, str(SCRIPT), str(tmp_path / "model"), str(tmp_path / name),
                          str(per_device), str(result)], check=False, capture_output=True,
                         text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-4000:]
    return torch.load(result, weights_only=True)


def test_two_processes_train_like_one(tmp_path):
    model, _ = model_and_tokenizer("qwen2", hidden=32)  # the script builds the same tokenizer
    model.save_pretrained(tmp_path / "model")
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    assert accelerate, "accelerate's launcher is not installed next to this Python"
    # torchrun-style launch (accelerate's --cpu launcher needs MPI); use_cpu=True makes it gloo
    two = _run([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(_free_port())], tmp_path, "two", per_device=4)
    one = _run([sys.executable], tmp_path, "one", per_device=8)
    assert (two["processes"], one["processes"]) == (2, 1)
    # both processes hold bit-identical weights after every step (DDP's gradient all-reduce)
    assert two["same_weights"] == [True, True, True]
    # the loss of each step is the single-process loss of the same global batch (8 samples)
    assert len(two["losses"]) == len(one["losses"]) == 3
    assert all(abs(loss) > 1e-4 for loss in one["losses"])
    torch.testing.assert_close(torch.tensor(two["losses"]), torch.tensor(one["losses"]),
                               rtol=1e-4, atol=1e-6)
    for name, weight in one["weights"].items():
        torch.testing.assert_close(two["weights"][name], weight, rtol=1e-4, atol=1e-5)
