"""vLLM model classes that feed soft inputs: stock vLLM causal LMs whose forward replaces the
input embedding of every soft-thinking position by sum_j w_j E[ids_j] (spec 2.8).

The classes are registered in vLLM's ModelRegistry as ``SoftGRPO<Architecture>`` and selected
with ``hf_overrides={"architectures": [...]}`` (see engine.engine_options), so the checkpoint,
its weight loading and every kernel stay vLLM's own; only the input embeddings change.
"""

from __future__ import annotations

import torch
from vllm import ModelRegistry
from vllm.forward_context import get_forward_context, is_forward_context_available
from vllm.model_executor.models.llama import LlamaForCausalLM
from vllm.model_executor.models.qwen2 import Qwen2ForCausalLM

from .state import SoftRuntime

PREFIX = "SoftGRPO"


class SoftInputsMixin:
    """Put first in the bases of a vLLM causal LM with forward(input_ids, positions,
    intermediate_tensors, inputs_embeds), embed_input_ids and model.embed_tokens.

    ``softgrpo_runtime`` is attached by the worker extension; until then (vLLM's start-up
    profiling runs) the forward is the stock one. The model is always run on embeddings, so
    a compiled body sees one kind of input."""

    softgrpo_runtime: SoftRuntime | None = None

    def softgrpo_table(self) -> torch.Tensor:
        return self.model.embed_tokens.weight

    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor,
                intermediate_tensors=None, inputs_embeds: torch.Tensor | None = None,
                **kwargs):
        if inputs_embeds is None and input_ids is not None:
            inputs_embeds = self.embed_input_ids(input_ids)
        if self.softgrpo_runtime is not None and inputs_embeds is not None:
            inputs_embeds = self.softgrpo_runtime.soft_inputs(
                inputs_embeds, positions, _query_start_loc(), self.softgrpo_table())
        return super().forward(None, positions, intermediate_tensors, inputs_embeds, **kwargs)


def _query_start_loc() -> list[int] | None:
    """The token offsets of the batch rows in this forward (from the attention metadata the
    V1 runner builds from its persistent batch), None in a run without metadata."""
    if not is_forward_context_available():
        return None
    metadata = get_forward_context().attn_metadata
    if isinstance(metadata, list):
        raise TypeError("softgrpo: micro-batched forwards (DBO) are not supported")
    for value in (metadata or {}).values():
        loc = getattr(value, "query_start_loc", None)
        if loc is not None:
            return loc.tolist()
    return None


def _soft_class(base: type) -> type:
    return type(f"{PREFIX}{base.__name__}", (SoftInputsMixin, base),
                {"__module__": __name__, "__doc__": f"{base.__name__} fed soft inputs."})


SoftQwen2ForCausalLM = _soft_class(Qwen2ForCausalLM)
SoftLlamaForCausalLM = _soft_class(LlamaForCausalLM)

# Checkpoint architecture -> the soft class that serves it.
SOFT_CLASSES: dict[str, type] = {"Qwen2ForCausalLM": SoftQwen2ForCausalLM,
                                 "LlamaForCausalLM": SoftLlamaForCausalLM}


def register() -> None:
    """Register the soft classes with vLLM (idempotent). Also the ``vllm.general_plugins``
    entry point, so that worker processes started with spawn have them too."""
    for cls in SOFT_CLASSES.values():
        if cls.__name__ not in ModelRegistry.get_supported_archs():
            ModelRegistry.register_model(cls.__name__, cls)
