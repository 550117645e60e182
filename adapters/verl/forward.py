"""The actor's soft forward: records -> input embeddings -> last hidden states -> log-probs.

It runs inside the model's own forward (patched on the instance, as verl's fused-kernel path
and TRL's fused LM head do). verl's FSDP2 wraps the input embedding and an untied LM head as
modules of their own, whose weights are sharded outside their own forward; so the soft
embedding and the soft log-prob each run *as the forward of that module* (its forward is
swapped for the call), and FSDP's hooks unshard the weight and reduce its gradient as usual.
No (N, V) logits are formed: soft rows read K rows of the head
(softgrpo.soft_logprob_from_hidden), discrete rows a chunked log-sum-exp. Multiplex records
(spec 10) are mixed by their draws' weights and scored by the sum of the draws' log-probs
(softgrpo.multiplex_logprob_from_hidden).
"""

from __future__ import annotations

import types
from collections.abc import Callable
from dataclasses import dataclass

import torch

from softgrpo import soft_embedding, soft_token_embedding
from softgrpo.adapters.hf.embeddings import InputEmbedder
from softgrpo.adapters.hf.forward import lm_head
from softgrpo.ops.fused_linear import soft_logprob_from_hidden
from softgrpo.ops.multiplex import multiplex_weights
from softgrpo.ops.multiplex_logprob import multiplex_logprob_from_hidden

from .records import PackedRecords


@dataclass
class SoftForwardOutput:
    """log_probs (1, N) fp32: at position t the log-prob of record t + 1, 0 where unscored."""

    log_probs: torch.Tensor


def _as_forward_of(module: torch.nn.Module, fn: Callable[[torch.nn.Module, torch.Tensor],
                                                        torch.Tensor], x: torch.Tensor):
    """module(x) with fn(module, x) as its forward, so wrappers' hooks run around it."""
    module.forward = types.MethodType(fn, module)
    try:
        return module(x)
    finally:
        del module.forward  # back to the class's forward


def soft_forward(model: torch.nn.Module, records: PackedRecords, scale: torch.Tensor | None,
                 **backbone_kwargs) -> SoftForwardOutput:
    """Per-position SofT-GRPO log-probs of packed records (spec section 4).

    Args:
        model: a Hugging Face causal LM (backbone model.base_model).
        records: (N, k) packed records (a leading batch dimension of 1 is added here).
        scale: the input-embedding module's constant output scale (InputEmbedder.scale).
        backbone_kwargs: position_ids, attention_mask, ... for the backbone (no input_ids).
    The soft input embeddings are detached, as in the release (spec 4).
    """
    multiplex = records.policy == "multiplex"

    def embed(module, tokens):
        with torch.no_grad():
            if multiplex:  # the draws' mix (spec 10)
                weights = multiplex_weights(records.perturbed, records.weighting)
                rows = soft_embedding(module.weight, records.ids, weights)
            else:
                rows = soft_token_embedding(module.weight, records.ids, records.perturbed,
                                            records.tau)
            # the module's own semantics: a row of its table times its constant scale
            return rows if scale is None else rows * scale.to(rows.dtype)

    scored = records.scored
    # the label of position t is the record of position t + 1
    labels = records.ids.roll(-1, 0)[scored], records.perturbed.roll(-1, 0)[scored]
    kept = records.kept.roll(-1, 0)[scored] if records.likelihood == "filtered" else None

    def head(module, hidden):
        bias = None if module.bias is None else module.bias.to(hidden.dtype)
        weight = module.weight.to(hidden.dtype)
        if multiplex:  # the step's joint log-prob: the sum over its draws (spec 10)
            values = multiplex_logprob_from_hidden(
                hidden, weight, *labels, kept=kept, bias=bias,
                temperature=records.temperature).sum(-1)
        else:
            values = soft_logprob_from_hidden(
                hidden, weight, *labels, temperature=records.temperature, clamp=records.clamp,
                likelihood=records.likelihood, conditional_weight=records.conditional_weight,
                noise_scale=records.noise_scale, bias=bias)
        # FSDP2 hooks the output for the backward; a view of it could lose that hook
        return values if values._base is None else values.clone()

    embeds = _as_forward_of(model.get_input_embeddings(), embed, records.ids[:, 0])
    hidden = model.base_model(inputs_embeds=embeds[None], **backbone_kwargs).last_hidden_state
    values = _as_forward_of(model.get_output_embeddings(), head, hidden[0][scored])
    # masked_scatter keeps the graph connected even when no position is scored
    log_probs = values.new_zeros((1, *scored.shape)).masked_scatter(scored[None], values)
    return SoftForwardOutput(log_probs)


def add_soft_forward(model: torch.nn.Module) -> None:
    """Patch ``model.forward`` (call before FSDP wraps the model): with
    ``softgrpo=PackedRecords(...)`` it returns :func:`soft_forward`'s output (input_ids are
    ignored: the records hold them); without, the original forward runs unchanged.

    Raises ValueError (the HF adapter's checks) for a model without an LM head, one whose
    logits are softcapped or scaled, or an input-embedding module whose output is not a
    scaled row of its table."""
    lm_head(model)
    scale = InputEmbedder(model).scale
    original = model.forward

    def forward(self, *args, softgrpo: PackedRecords | None = None, **kwargs):
        if softgrpo is None:
            return original(*args, **kwargs)
        kwargs.pop("input_ids", None)
        return soft_forward(self, softgrpo, scale, **kwargs)

    model.forward = types.MethodType(forward, model)
