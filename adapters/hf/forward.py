"""The training forward (spec section 4): rebuild every position's input embedding from a
Rollout's records, run the model body to its last hidden states (no logits) and score each
response position with softgrpo's fused LM-head log-prob."""

from __future__ import annotations

import torch

from softgrpo.ops.fused_linear import soft_logprob_from_hidden
from softgrpo.ops.multiplex_logprob import MULTIPLEX_LOGPROBS, multiplex_logprob_from_hidden
from softgrpo.rollout import Rollout

from .embeddings import InputEmbedder

# Config fields of models whose logits are not hidden @ W.T + b (softcapping, scaling): the
# fused LM-head log-prob cannot reproduce them.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def lm_head(model: torch.nn.Module) -> torch.nn.Module:
    """The model's LM head, checked to compute hidden @ W.T + b (no softcapping or scaling)."""
    head = model.get_output_embeddings()
    if head is None or not isinstance(getattr(head, "weight", None), torch.Tensor):
        raise ValueError(f"{type(model).__name__} has no LM head (get_output_embeddings())")
    config = model.config.get_text_config()
    for name in _LOGIT_TRANSFORMS:
        value = getattr(config, name, None)
        if value is not None and value != 1.0:
            raise ValueError(f"{type(model).__name__} transforms its logits ({name}={value}); "
                             "the training forward scores hidden @ W.T + b only")
    return head


def _check_rollout(rollout: Rollout) -> None:
    if not isinstance(rollout, Rollout):
        raise TypeError(f"rollout must be a softgrpo.rollout.Rollout, got "
                        f"{type(rollout).__name__}")
    rows, prompt = rollout.prompt_ids.shape
    if rollout.prompt_mask.shape != (rows, prompt):
        raise ValueError("prompt_mask must have the shape of prompt_ids")
    steps = rollout.response_ids.shape[1]
    k = rollout.topk_ids.shape[-1]
    for name, shape in (("response_mask", (rows, steps)), ("topk_ids", (rows, steps, k)),
                        ("perturbed", (rows, steps, k))):
        if tuple(getattr(rollout, name).shape) != shape:
            raise ValueError(f"rollout.{name} must have shape {shape}, got "
                             f"{tuple(getattr(rollout, name).shape)}")
    kept = rollout.kept_ids
    if kept is not None and (kept.dim() != 3 or tuple(kept.shape[:2]) != (rows, steps)):
        raise ValueError(f"rollout.kept_ids must have shape ({rows}, {steps}, W), got "
                         f"{tuple(kept.shape)}")
    if prompt == 0 or (~rollout.prompt_mask[:, -1]).any():
        raise ValueError("every prompt must end with a real token (left padding)")


def input_embeddings(model: torch.nn.Module, rollout: Rollout, *,
                     pathwise: bool = False) -> torch.Tensor:
    """(B, P+L, H) input embeddings of a rollout's prompt and response positions.

    Prompt tokens through the model's input-embedding module; response records through
    InputEmbedder.records (gumbel policy: soft rows sum_k softmax(y / tau)_k E[ids_k];
    multiplex: the draws' mix; discrete rows E[s]), scaled like the module (Gemma's embed_scale). Padding positions hold some token's
    embedding (masked by the caller). pathwise=False (the release): detached. pathwise=True:
    differentiable w.r.t. the embedding table (and ``rollout.perturbed`` if it requires grad).
    """
    _check_rollout(rollout)
    embedder = InputEmbedder(model)
    device = embedder.table.device
    with torch.set_grad_enabled(pathwise and torch.is_grad_enabled()):
        prompt = embedder.tokens(rollout.prompt_ids.to(device))
        response = embedder.records_of(rollout.topk_ids.to(device),
                                       rollout.perturbed.to(device), rollout.config)
    return torch.cat([prompt, response.to(prompt.dtype)], dim=1)


def policy_logprobs(model: torch.nn.Module, rollout: Rollout, *,
                    temperature: float | None = None, pathwise: bool = False,
                    likelihood: str = "release", conditional_weight: float = 0.0,
                    multiplex_logprob: str = "filtered",
                    chunk_size: int | None = None) -> torch.Tensor:
    """(B, L) fp32 log-probs of a rollout's response positions under ``model`` (spec 4);
    (B, L, k) per-draw log-probs for a multiplex rollout (spec 10).

    The body (model.get_decoder()) runs on the rebuilt input embeddings with a left-padding
    attention mask and position ids; the hidden state at position P-1+t scores response
    record t with softgrpo.soft_logprob_from_hidden against the LM head (weight and optional
    bias): soft rows the Gumbel density of the recovered noise from their k logits, discrete
    rows log_softmax(z / T)[token]. Positions where response_mask is False get 0.

    Args:
        model: the policy (a Hugging Face causal LM; any mode, gradient checkpointing and
            autocast allowed).
        rollout: a Rollout (or a slice of one, see ``select``).
        temperature: T > 0; default the rollout's (1 for a greedy rollout).
        pathwise: keep the gradient through the soft input embeddings (see input_embeddings).
        likelihood, conditional_weight: the soft-row score (soft_logprob_from_hidden, spec 9);
            the rollout's noise clamp and noise scale go with it ("exact" and "token" need a
            rollout with noise_clamp=None). Gumbel-policy rollouts only.
        multiplex_logprob: a multiplex rollout's per-draw log-prob (multiplex_logprob_from_hidden,
            spec 10): "filtered" (over the filter's kept set, Rollout.kept_ids; the vocabulary
            without a filter: exact) or "full" (over the vocabulary, the release's).
        chunk_size: passed to soft_logprob_from_hidden / multiplex_logprob_from_hidden.

    Raises:
        TypeError / ValueError: not a Rollout, inconsistent shapes, a model without an LM head
        or whose logits are softcapped or scaled, a likelihood the rollout cannot serve.
    """
    if multiplex_logprob not in MULTIPLEX_LOGPROBS:
        raise ValueError(f"multiplex_logprob must be one of {MULTIPLEX_LOGPROBS}, got "
                         f"{multiplex_logprob!r}")
    head = lm_head(model)
    embeds = input_embeddings(model, rollout, pathwise=pathwise)
    device = embeds.device
    prompt, steps = rollout.prompt_ids.shape[1], rollout.response_ids.shape[1]
    response_mask = rollout.response_mask.to(device)
    slots = (rollout.topk_ids.shape[-1],) if rollout.config.multiplex else ()
    if steps == 0:
        return torch.zeros((*response_mask.shape, *slots), device=device)
    # The last response position scores nothing: its input is not needed.
    mask = torch.cat([rollout.prompt_mask.to(device), response_mask], 1)[:, :-1].long()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: real tokens count from 0
    hidden = model.get_decoder()(inputs_embeds=embeds[:, :-1], attention_mask=mask,
                                 position_ids=positions, use_cache=False).last_hidden_state
    hidden = hidden[:, prompt - 1:][response_mask]  # position P-1+t scores record t
    bias = head.bias if getattr(head, "bias", None) is not None else None
    hidden = hidden.to(head.weight.dtype)  # autocast may hand back bf16 states; score in W's
    ids, perturbed = (rollout.topk_ids.to(device)[response_mask],
                      rollout.perturbed.to(device)[response_mask])
    temperature = temperature if temperature is not None else rollout.config.temperature or 1.0
    if rollout.config.multiplex:
        kept = rollout.kept_ids
        kept = None if kept is None or multiplex_logprob == "full" else \
            kept.to(device)[response_mask]
        logp = multiplex_logprob_from_hidden(hidden, head.weight, ids, perturbed, kept=kept,
                                             bias=bias, temperature=temperature,
                                             chunk_size=chunk_size)
    else:
        logp = soft_logprob_from_hidden(
            hidden, head.weight, ids, perturbed, bias=bias, temperature=temperature,
            clamp=rollout.config.noise_clamp, likelihood=likelihood,
            conditional_weight=conditional_weight, noise_scale=rollout.config.noise_scale,
            chunk_size=chunk_size)
    out = logp.new_zeros((*response_mask.shape, *slots))
    return out.masked_scatter(response_mask.view(*response_mask.shape, *(1,) * len(slots))
                              .expand_as(out), logp)
