"""Worker extension (vLLM's ``worker_extension_cls``): the user's process reaches the worker
through ``LLM.collective_rpc`` to check the engine and link the model to the logits
processor (softgrpo_attach), to collect a rollout's records (softgrpo_take) and to receive
weights from another process (softgrpo_load_weights).

vLLM imports this module in every worker process before it builds the model, so importing it
registers the soft-input model classes there (a spawned worker does not inherit the
registrations of the process that created the engine)."""

from __future__ import annotations

import io
from types import ModuleType

import torch

from .engine import SUPPORTED, check_runner
from .model import input_embedder, register
from .processor import SoftThinkingLogitsProcessor
from .state import SoftRuntime

register()


def _fail(reason: str) -> None:
    raise RuntimeError(f"softgrpo.adapters.vllm: {reason}. Supported: {SUPPORTED}")


def uses_v2(model_runner) -> bool:
    """Whether ``model_runner`` is Model Runner V2 (vllm.v1.worker.gpu.model_runner, or the
    CPU/XPU runners built on it)."""
    return any(c.__module__ == "vllm.v1.worker.gpu.model_runner"
               for c in type(model_runner).__mro__)


def _runner(v2: bool) -> ModuleType:
    from . import runner_v1, runner_v2

    return runner_v2 if v2 else runner_v1


def link(model_runner, v2: bool | None = None) -> SoftRuntime:
    """Link the runner's soft-input model (V1: its class, V2: its model state) to the logits
    processor's runtime, with the model's record -> input-embedding map; returns the runtime.
    ``v2``: which runner's bookkeeping ``model_runner`` has (default: :func:`uses_v2`).
    RuntimeError / ValueError when the engine was not built with softgrpo's options or the
    model's input embedding is not a (scaled) table lookup."""
    runner = _runner(uses_v2(model_runner) if v2 is None else v2)
    runtime = runner.processor(model_runner).runtime
    runner.attach(model_runner, runtime)
    runtime.embed_records = input_embedder(model_runner.get_model()).records_of
    return runtime


class SoftThinkingWorkerExtension:
    """Mixed into vLLM's worker class; methods are called with collective_rpc."""

    def _softgrpo_processor(self) -> SoftThinkingLogitsProcessor:
        try:
            return _runner(uses_v2(self.model_runner)).processor(self.model_runner)
        except RuntimeError as error:
            _fail(str(error))

    def softgrpo_attach(self) -> dict:
        """Check that this engine can run soft thinking and link the model to the logits
        processor's runtime. Returns a description of what was checked."""
        runner, config = self.model_runner, self.vllm_config
        try:
            check_runner(uses_v2(runner))
        except RuntimeError as error:
            raise RuntimeError(f"{error} (this engine runs {type(runner).__name__})") from None
        parallel = config.parallel_config
        if parallel.world_size != 1 or parallel.data_parallel_size != 1:
            _fail("tensor, pipeline and data parallel sizes must be 1")
        if getattr(parallel, "use_ubatching", False):
            _fail("micro-batching (DBO) is not supported")
        if config.speculative_config is not None:
            _fail("speculative decoding is not supported")
        if config.cache_config.enable_prefix_caching:
            _fail("prefix caching must be off (soft positions with equal text tokens would "
                  "share KV blocks)")
        if config.scheduler_config.async_scheduling:
            _fail("async scheduling must be off (a step scheduled before the previous one "
                  "is sampled would run past a request's end)")
        try:
            link(runner)
        except (RuntimeError, ValueError) as error:
            _fail(str(error))
        return {"runner": type(runner).__name__, "model": type(runner.get_model()).__name__,
                "v2": uses_v2(runner)}

    def softgrpo_load_weights(self, blob: bytes) -> None:
        """reload_weights from a torch.save'd state dict (backend.load_weights)."""
        weights = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
        self.reload_weights(weights_iterator=list(weights.items()))

    def softgrpo_take(self, tags: list[str]) -> dict[str, dict]:
        """Remove and return the records of the requests ``tags``."""
        return self._softgrpo_processor().runtime.take(tags)
