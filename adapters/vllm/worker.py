"""Worker extension (vLLM's ``worker_extension_cls``): the user's process reaches the worker
through ``LLM.collective_rpc`` to check the engine and link the model to the logits
processor (softgrpo_attach), to collect a rollout's records (softgrpo_take) and to receive
weights from another process (softgrpo_load_weights).

vLLM imports this module in every worker process before it builds the model, so importing it
registers the soft-input model classes there (a spawned worker does not inherit the
registrations of the process that created the engine)."""

from __future__ import annotations

import io

import torch

from .engine import SUPPORTED, check_version
from .model import SoftInputsMixin, register
from .processor import SoftThinkingLogitsProcessor

register()

_PROBE_IDS = 16


def _fail(reason: str) -> None:
    raise RuntimeError(f"softgrpo.adapters.vllm: {reason}. Supported: {SUPPORTED}")


class SoftThinkingWorkerExtension:
    """Mixed into vLLM's worker class; methods are called with collective_rpc."""

    def _softgrpo_processor(self) -> SoftThinkingLogitsProcessor:
        found = [p for p in self.model_runner.input_batch.logitsprocs.all
                 if isinstance(p, SoftThinkingLogitsProcessor)]
        if len(found) != 1:
            _fail(f"the engine has {len(found)} SoftThinkingLogitsProcessor (need exactly one; "
                  "pass logits_processors from engine_options())")
        return found[0]

    def softgrpo_attach(self) -> dict:
        """Check that this engine can run soft thinking and link the model to the logits
        processor's runtime. Returns a description of what was checked."""
        from vllm.config import CUDAGraphMode
        from vllm.v1.worker.gpu_model_runner import GPUModelRunner

        check_version()
        runner, config = self.model_runner, self.vllm_config
        if not isinstance(runner, GPUModelRunner) or config.use_v2_model_runner:
            _fail(f"model runner {type(runner).__module__}.{type(runner).__name__} is not the "
                  "V1 runner (set VLLM_USE_V2_MODEL_RUNNER=0)")
        model = runner.get_model()
        if not isinstance(model, SoftInputsMixin):
            _fail(f"the model class {type(model).__name__} does not feed soft inputs (pass "
                  "hf_overrides from engine_options())")
        table = model.softgrpo_table()
        ids = torch.arange(min(_PROBE_IDS, table.shape[0]), device=table.device)
        with torch.no_grad():
            if not torch.equal(model.embed_input_ids(ids), table[ids]):
                _fail(f"{type(model).__name__}.embed_input_ids is not a lookup of "
                      "model.embed_tokens.weight")
        runtime = self._softgrpo_processor().runtime
        parallel = config.parallel_config
        if parallel.world_size != 1 or parallel.data_parallel_size != 1:
            _fail("tensor, pipeline and data parallel sizes must be 1")
        if parallel.use_ubatching:
            _fail("micro-batching (DBO) is not supported")
        if config.speculative_config is not None:
            _fail("speculative decoding is not supported")
        if config.cache_config.enable_prefix_caching:
            _fail("prefix caching must be off (soft positions with equal text tokens would "
                  "share KV blocks)")
        if config.scheduler_config.async_scheduling:
            _fail("async scheduling must be off")
        if config.compilation_config.cudagraph_mode != CUDAGraphMode.NONE:
            _fail("CUDA graphs must be off (enforce_eager=True): a replayed graph would skip "
                  "the soft-input replacement")
        model.softgrpo_runtime = runtime
        return {"runner": type(runner).__name__, "model": type(model).__name__}

    def softgrpo_load_weights(self, blob: bytes) -> None:
        """reload_weights from a torch.save'd state dict (backend.load_weights)."""
        weights = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
        self.reload_weights(weights_iterator=list(weights.items()))

    def softgrpo_take(self, tags: list[str]) -> dict[str, dict]:
        """Remove and return the records of the requests ``tags``."""
        return self._softgrpo_processor().runtime.take(tags)
