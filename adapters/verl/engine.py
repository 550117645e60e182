"""A verl FSDP/FSDP2 language-model engine whose forward scores soft-thinking records.

Registered in verl's EngineRegistry as model_type "softgrpo" (select it with
``actor_rollout_ref.model.model_type=softgrpo``; actor and reference then both use it). It
differs from verl's FSDPEngineWithLMHead in two overrides: prepare_model_inputs packs the
batch's soft records (softgrpo.adapters.verl.records) next to verl's packed input ids, and
prepare_model_outputs reads the log-probs the patched model forward computed from the last
hidden states (softgrpo.adapters.verl.forward) instead of full logits.
"""

from __future__ import annotations

import math

import torch
from verl.utils import tensordict_utils as tu
from verl.workers.engine.base import EngineRegistry
from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

from . import records as rec
from .forward import add_soft_forward

MODEL_TYPE = "softgrpo"


def response_lengths(micro_batch) -> torch.Tensor:
    """(B,) response tokens per sample, as verl's no_padding_2_padding counts them."""
    prompts, responses = micro_batch["prompts"], micro_batch["responses"]
    if prompts.is_nested:
        return responses.offsets().diff()
    return micro_batch["attention_mask"][:, prompts.shape[1]:].sum(dim=1)


def _flag(micro_batch, key: str, default: bool = False) -> bool:
    return bool(tu.get_non_tensor_data(data=micro_batch, key=key, default=default))


@EngineRegistry.register(model_type=MODEL_TYPE, backend=["fsdp", "fsdp2"],
                         device=["cuda", "npu", "cpu"])
class SoftGRPOFSDPEngine(FSDPEngineWithLMHead):
    """FSDPEngineWithLMHead for SofT-GRPO: input embeddings rebuilt from the stored top-k ids
    and perturbed values, log-probs by softgrpo.soft_logprob_from_hidden (spec section 4).

    Supported: FSDP and FSDP2, use_remove_padding=True, static packed padding (pad_to_length),
    dynamic batch size, LoRA, gradient checkpointing, bf16 mixed precision.
    Raises NotImplementedError for Ulysses sequence parallelism, use_remove_padding=False,
    verl's fused kernels, multi-modal inputs, top-k distillation, Σπ² and for an entropy
    that needs gradient (entropy_coeff != 0 or actor.calculate_entropy=True); a no-grad
    entropy request (the old-log-prob pass logs actor/entropy) is answered with NaN, since
    the full-vocabulary entropy at soft rows would need the full logits this engine avoids.
    """

    def _build_module(self):
        # verl builds modules only for "language_model" / "value_model"; this is the former
        self.model_config.model_type = "language_model"
        try:
            module = super()._build_module()
        finally:
            self.model_config.model_type = MODEL_TYPE
        add_soft_forward(module)
        return module

    def _check_supported(self, micro_batch) -> None:
        unsupported = {
            "Ulysses sequence parallelism": self.use_ulysses_sp,
            "use_remove_padding=False": not _flag(micro_batch, "use_remove_padding", True),
            "use_fused_kernels (this engine's forward is itself fused)":
                _flag(micro_batch, "use_fused_kernels"),
            "top-k distillation": _flag(micro_batch, "distillation_use_topk"),
            "calculate_sum_pi_squared": _flag(micro_batch, "calculate_sum_pi_squared"),
            "multi-modal inputs": len(micro_batch.get("multi_modal_inputs", [])) > 0,
        }
        for name, used in unsupported.items():
            if used:
                raise NotImplementedError(f"the softgrpo engine does not support {name}")

    def prepare_model_inputs(self, micro_batch):
        self._check_supported(micro_batch)
        model_inputs, output_args = super().prepare_model_inputs(micro_batch)
        packed = rec.pack(micro_batch, response_lengths(micro_batch))
        temperatures = output_args["temperature_rmpad"]
        if not torch.all(temperatures == packed.temperature):
            raise ValueError(f"the rollout sampled at temperature {packed.temperature} but the "
                             "actor scores at rollout.temperature="
                             f"{sorted(set(temperatures.tolist()))}: set them equal")
        model_inputs["softgrpo"] = packed.padded(output_args["pad_size"])
        return model_inputs, output_args

    def prepare_model_outputs(self, output, output_args, micro_batch, logits_processor_func):
        log_probs = self._gather_and_unpad_packed(output.log_probs.squeeze(0),
                                                  output_args["pad_size"])
        offsets = micro_batch["input_ids"].offsets()
        model_output = {"log_probs": torch.nested.nested_tensor_from_jagged(log_probs, offsets)}
        if _flag(micro_batch, "calculate_entropy"):
            if torch.is_grad_enabled():
                raise NotImplementedError(
                    "the softgrpo engine computes no entropy for the loss (it would need the "
                    "full logits at soft rows): set actor.entropy_coeff=0 and "
                    "actor.calculate_entropy=False")
            entropy = torch.full_like(log_probs, math.nan)
            model_output["entropy"] = torch.nested.nested_tensor_from_jagged(entropy, offsets)
        return model_output
