"""Checks and preparation of a rollout's inputs, all done before any model work."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from softgrpo import _checks, noise_key
from softgrpo.philox import MAX_OFFSET
from softgrpo.rollout import SoftThinkingConfig


@dataclass
class PromptBatch:
    """Left-padded prompts on the model's device and everything the loop needs.

    input_ids (B, P) int64; attention_mask (B, P) int64 (0 = left padding); keys (B,) int64
    Philox keys noise_key(config.seed, sequence_ids); think_end: the token sequence of
    config.think_end; eos_ids: ids that end a row; pad_id: the tokenizer's pad id."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    sequence_ids: torch.Tensor
    keys: torch.Tensor
    think_end: list[int]
    eos_ids: list[int]
    pad_id: int


def output_vocab_size(model: torch.nn.Module) -> int:
    head = model.get_output_embeddings()
    if head is None or getattr(head, "weight", None) is None:
        raise ValueError(f"{type(model).__name__} has no LM head (get_output_embeddings())")
    return head.weight.shape[0]


def think_end_ids(tokenizer, think_end: str, vocab_size: int) -> list[int]:
    """The token sequence of ``think_end`` (no special tokens); ValueError when the tokenizer
    cannot encode it (empty, unknown token, or ids outside the model's vocabulary)."""
    ids = list(tokenizer.encode(think_end, add_special_tokens=False))
    unk = getattr(tokenizer, "unk_token_id", None)
    if not ids or (unk is not None and unk in ids) or max(ids) >= vocab_size:
        raise ValueError(f"think_end {think_end!r} cannot be encoded by the tokenizer "
                         f"(got ids {ids}); pass a think_end string the tokenizer knows")
    return ids


def eos_token_ids(model: torch.nn.Module, tokenizer) -> list[int]:
    """tokenizer.eos_token_id and the model's generation_config eos ids (int or list)."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    generation_config = getattr(model, "generation_config", None)
    extra = getattr(generation_config, "eos_token_id", None)
    if extra is not None:
        ids.update(int(i) for i in ([extra] if isinstance(extra, int) else extra))
    return sorted(ids)


def _tokenize(tokenizer, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)) or not prompts:
        raise TypeError("prompts must be a non-empty list of strings")
    if not all(isinstance(p, str) for p in prompts):
        raise TypeError("prompts must be a non-empty list of strings")
    encoded = tokenizer(list(prompts), padding=True, padding_side="left", return_tensors="pt")
    return encoded["input_ids"], encoded["attention_mask"]


def _check_ids(input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
               vocab_size: int) -> torch.Tensor:
    _checks.tensor("input_ids", input_ids, dtypes=_checks.INT_DTYPES, ndim=2)
    if input_ids.numel() == 0:
        raise ValueError(f"input_ids must be non-empty, got shape {tuple(input_ids.shape)}")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    _checks.tensor("attention_mask", attention_mask,
                   dtypes=(*_checks.INT_DTYPES, torch.bool), ndim=2)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask must have the shape of input_ids "
                         f"{tuple(input_ids.shape)}, got {tuple(attention_mask.shape)}")
    mask = attention_mask.long()
    if ((mask != 0) & (mask != 1)).any():
        raise ValueError("attention_mask must hold only 0 and 1")
    if (mask[:, 1:] < mask[:, :-1]).any():
        raise ValueError("attention_mask must be left-padded (zeros before the prompt tokens)")
    if (mask[:, -1] == 0).any():
        raise ValueError("every prompt must have at least one token")
    real = input_ids[mask.bool()]
    if int(real.min()) < 0 or int(real.max()) >= vocab_size:
        raise ValueError(f"input_ids must lie in [0, {vocab_size}) where attention_mask is 1")
    return mask


def _check_sequence_ids(sequence_ids: torch.Tensor | None, rows: int) -> torch.Tensor:
    if sequence_ids is None:
        return torch.arange(rows, dtype=torch.int64)
    _checks.tensor("sequence_ids", sequence_ids, dtypes=_checks.INT_DTYPES, ndim=1)
    if sequence_ids.shape[0] != rows:
        raise ValueError(f"sequence_ids must have shape ({rows},), got "
                         f"{tuple(sequence_ids.shape)}")
    if int(sequence_ids.min()) < 0 or int(sequence_ids.max()) > MAX_OFFSET:
        raise ValueError(f"sequence_ids must lie in [0, {MAX_OFFSET}]")
    if sequence_ids.unique().numel() != sequence_ids.numel():
        raise ValueError("sequence_ids must be distinct (each is one sequence's noise key)")
    return sequence_ids.long().cpu()


def prepare_prompts(tokenizer, prompts: list[str] | None, config: SoftThinkingConfig,
                    input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None,
                    sequence_ids: torch.Tensor | None, *, vocab_size: int,
                    max_length: tuple[int, str] | None, eos_ids: list[int],
                    device: torch.device | str) -> PromptBatch:
    """Engine-independent checks and the left-padded batch (raises before any model work).

    vocab_size: the logits' width. max_length: (limit, what it is) for prompt + max_new_tokens,
    or None. eos_ids: the ids that end a row. device: where the batch goes.

    Raises:
        TypeError: config is not a SoftThinkingConfig; prompts not a list of strings.
        ValueError: both or neither of prompts / input_ids; a tokenizer without a pad token;
            think_end the tokenizer cannot encode; k, after_top_k or multiplex_top_k larger
            than the vocabulary (the vLLM adapter's sampler must not meet it in the engine);
            a prompt longer than the limit minus max_new_tokens; bad masks, ids or
            sequence_ids (wrong shape, out of range, repeated).
    """
    if not isinstance(config, SoftThinkingConfig):
        raise TypeError(f"config must be a SoftThinkingConfig, got {type(config).__name__}")
    if (prompts is None) == (input_ids is None):
        raise ValueError("pass exactly one of prompts or input_ids")
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token: set tokenizer.pad_token (batches are "
                         "left-padded and responses right-padded with it)")
    for name in ("k", "after_top_k", "multiplex_top_k"):
        if (getattr(config, name) or 0) > vocab_size:
            raise ValueError(f"config.{name}={getattr(config, name)} is larger than the "
                             f"model's vocabulary ({vocab_size})")
    think_end = think_end_ids(tokenizer, config.think_end, vocab_size)
    if prompts is not None:
        if attention_mask is not None:
            raise ValueError("attention_mask goes with input_ids, not with prompts")
        input_ids, attention_mask = _tokenize(tokenizer, prompts)
    mask = _check_ids(input_ids, attention_mask, vocab_size)
    longest = int(mask.sum(1).max())
    if max_length is not None and longest + config.max_new_tokens > max_length[0]:
        raise ValueError(f"a prompt of {longest} tokens plus max_new_tokens="
                         f"{config.max_new_tokens} exceeds {max_length[1]} ({max_length[0]}); "
                         "shorten the prompt or lower max_new_tokens")
    sequence_ids = _check_sequence_ids(sequence_ids, input_ids.shape[0])
    return PromptBatch(input_ids.long().to(device), mask.to(device), sequence_ids,
                       noise_key(config.seed, sequence_ids).to(device), think_end, eos_ids,
                       int(tokenizer.pad_token_id))


def prepare(model: torch.nn.Module, tokenizer, prompts: list[str] | None,
            config: SoftThinkingConfig, input_ids: torch.Tensor | None,
            attention_mask: torch.Tensor | None,
            sequence_ids: torch.Tensor | None) -> PromptBatch:
    """:func:`prepare_prompts` for a Hugging Face model: its LM head's vocabulary, its
    max_position_embeddings, its EOS ids, its device."""
    limit = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    return prepare_prompts(
        tokenizer, prompts, config, input_ids, attention_mask, sequence_ids,
        vocab_size=output_vocab_size(model),
        max_length=None if limit is None else (limit, "the model's max_position_embeddings"),
        eos_ids=eos_token_ids(model, tokenizer),
        device=model.get_input_embeddings().weight.device)
