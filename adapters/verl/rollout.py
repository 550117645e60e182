"""Soft-thinking rollouts on verl's own vLLM rollout server (rollout.name = "softgrpo_vllm").

verl's vLLMReplica and vLLMHttpServer (a Ray actor running vLLM's AsyncLLM) with three
changes, everything else (launch, hybrid/standalone modes, sleep and wake-up, weight sync from
the FSDP actor through verl's checkpoint engine and worker extension) verl's own:
- the engine is started with softgrpo.adapters.vllm's options (engine_options: the soft-input
  model class through hf_overrides, the soft-thinking logits processor, prefix caching, async
  scheduling and CUDA graphs off) and a worker extension that is verl's plus softgrpo's;
  after launch the server checks the engine (softgrpo_attach) once;
- generate() runs verl's generate, then takes the request's records from the worker through
  vLLM's collective_rpc (softgrpo_take) and returns them in TokenOutput.extra_fields under
  RECORDS. Requests without a softgrpo payload are served exactly as verl serves them.
The agent loop "softgrpo_single_turn" (agent_loop.py) sends the soft requests and turns the
records into AgentLoopOutput.extra_fields.

Supported: as softgrpo.adapters.vllm (vLLM 0.24 to 0.34 under whichever model runner vLLM
picks, any text decoder architecture, one worker per server: tensor, pipeline and data
parallel size 1), no quantization, no LoRA adapter, no speculative decoding (MTP), no
prefill/decode disaggregation; CUDA graphs off.
"""

from __future__ import annotations

import ray
from verl.workers.rollout.replica import TokenOutput
from verl.workers.rollout.vllm_rollout.utils import vLLMColocateWorkerExtension
from verl.workers.rollout.vllm_rollout.vllm_async_server import vLLMHttpServer, vLLMReplica

from softgrpo.adapters.vllm.engine import SUPPORTED, engine_options
from softgrpo.adapters.vllm.processor import KEY
from softgrpo.adapters.vllm.worker import SoftThinkingWorkerExtension

RECORDS = "softgrpo_records"
WORKER_EXTENSION = f"{__name__}.SoftThinkingColocateWorkerExtension"


class SoftThinkingColocateWorkerExtension(SoftThinkingWorkerExtension,
                                          vLLMColocateWorkerExtension):
    """verl's colocate worker extension (weight updates, model patches) plus softgrpo's
    (softgrpo_attach, softgrpo_take)."""


class SoftGRPOvLLMHttpServer(vLLMHttpServer):
    """verl's vLLM rollout server whose engine samples soft-thinking requests."""

    def _validate_configs(self) -> None:
        super()._validate_configs()
        c = self.config
        unsupported = {
            "tensor/pipeline/data parallel size > 1": c.tensor_model_parallel_size != 1
            or c.data_parallel_size != 1 or c.pipeline_model_parallel_size != 1,
            "quantization": c.quantization is not None or (c.get("qat") or {}).get("enable"),
            "a LoRA adapter in the server": self.lora_as_adapter,
            "MTP speculative decoding": c.mtp is not None and c.mtp.enable and
            c.mtp.enable_rollout,
            "prefill/decode disaggregation": self._disaggregation_role != "null",
        }
        for name, used in unsupported.items():
            if used:
                raise NotImplementedError(f"rollout.name=softgrpo_vllm does not support {name}. "
                                          f"Supported: {SUPPORTED}")

    def _preprocess_engine_kwargs(self, engine_kwargs: dict) -> None:
        super()._preprocess_engine_kwargs(engine_kwargs)
        options = engine_options(self.model_config.local_path)
        ours = {"hf_overrides": options["hf_overrides"], "enable_prefix_caching": False,
                "async_scheduling": False, "enforce_eager": True,
                "logits_processors": [f"{p.__module__}:{p.__qualname__}"
                                      for p in options["logits_processors"]],
                "compilation_config": {"cudagraph_mode": "NONE"}}
        clash = sorted(k for k in ours if k in engine_kwargs and engine_kwargs[k] != ours[k])
        if clash:
            raise ValueError(f"rollout.engine_kwargs.vllm sets {clash}, which soft thinking "
                             f"needs as {ours}")
        engine_kwargs.update(ours)

    def _get_worker_extension_cls(self) -> str:
        return WORKER_EXTENSION

    async def launch_server(self, *args, **kwargs):
        await super().launch_server(*args, **kwargs)
        if self.node_rank == 0:
            await self.engine.collective_rpc("softgrpo_attach")

    async def generate(self, prompt_ids: list[int], sampling_params: dict, request_id: str,
                       **kwargs) -> TokenOutput:
        """verl's generate; for a soft-thinking request (SamplingParams.extra_args["softgrpo"])
        its records are taken from the worker and returned in extra_fields[RECORDS]."""
        payload = (sampling_params.get("extra_args") or {}).get(KEY)
        tag = payload.get("tag") if isinstance(payload, dict) else None
        try:
            output = await super().generate(prompt_ids, sampling_params, request_id, **kwargs)
        finally:
            taken = {} if tag is None else \
                (await self.engine.collective_rpc("softgrpo_take", args=([tag],)))[0]
        if tag is not None:
            output.extra_fields[RECORDS] = taken.get(tag)
        return output


class SoftGRPOvLLMReplica(vLLMReplica):
    """verl's vLLM replica serving through SoftGRPOvLLMHttpServer; its Ray actors are named
    "<rollout.name>_server_<replica>_<node>" (rollout.name: "softgrpo_vllm"), where verl's
    hybrid ServerAdapter looks them up (by rollout.name) for weight sync."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.server_class = ray.remote(SoftGRPOvLLMHttpServer)

    def _get_server_name_prefix(self) -> str:
        return f"{self.config.name}_"
