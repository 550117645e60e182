"""The trainer's rollout engine over a Hugging Face model, and the same rollout as a
transformers ``generate(custom_generate=...)`` decoding method."""

from __future__ import annotations

from collections.abc import Callable

import torch

from softgrpo.rollout import Rollout, SoftThinkingConfig

from .generate import DEFAULT_CONFIG, generate


class HFRolloutBackend:
    """softgrpo.rollout.RolloutBackend with the policy itself as the rollout engine."""

    def __init__(self, model: torch.nn.Module, tokenizer, *, progress: bool = False):
        self.model = model
        self.tokenizer = tokenizer
        self.progress = progress

    def generate(self, prompts: list[str], config: SoftThinkingConfig,
                 sequence_ids: torch.Tensor | None = None) -> Rollout:
        return generate(self.model, self.tokenizer, prompts, config, sequence_ids=sequence_ids,
                        progress=self.progress)

    def load_weights(self, model: torch.nn.Module) -> None:
        """Copy ``model``'s weights in; a no-op when it is the backend's own model."""
        if model is not self.model:
            self.model.load_state_dict(model.state_dict())


def soft_thinking_decoding(tokenizer, config: SoftThinkingConfig = DEFAULT_CONFIG, *,
                           sequence_ids: torch.Tensor | None = None,
                           progress: bool = False) -> Callable[..., Rollout]:
    """A decoding method for ``model.generate(input_ids, attention_mask=mask,
    custom_generate=soft_thinking_decoding(tokenizer, config))``, which returns a Rollout.

    transformers prepares the inputs (tokenized ids, attention mask) and calls it in place of
    its sampling loop; the rollout is :func:`generate` on those inputs. Everything that
    controls sampling and length comes from ``config``: the generation config's sampling
    settings, max_length / max_new_tokens, logits processors, stopping criteria and the cache
    transformers prepares are not used."""

    def decode(model, input_ids, logits_processor=None, stopping_criteria=None,
               generation_config=None, synced_gpus=False, streamer=None, **model_kwargs):
        if streamer is not None:
            raise ValueError("soft_thinking_decoding does not support a streamer")
        return generate(model, tokenizer, config=config, input_ids=input_ids,
                        attention_mask=model_kwargs.get("attention_mask"),
                        sequence_ids=sequence_ids, progress=progress)

    return decode
