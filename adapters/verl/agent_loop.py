"""The agent loop "softgrpo_single_turn": one soft-thinking rollout per sample on verl's
rollout server (rollout.name = "softgrpo_vllm", see rollout.py), records returned in
AgentLoopOutput.extra_fields for the softgrpo actor (records.py).

Settings: the soft-token width K, top-p and temperature are verl's own sampling parameters of
the request (rollout.top_k / top_p / temperature, or rollout.val_kwargs when validating); the
soft-thinking ones come from the trainer config's top-level ``softgrpo`` section (tau,
noise_scale, noise_clamp, after_top_k, after_top_p, think_end, max_thinking_tokens, seed,
mode; soft_policy and, for Multiplex Thinking, multiplex_top_k, multiplex_top_p and
multiplex_weighting: K is then the number of draws and rollout.top_p must be 1), and so do the
actor's likelihood and conditional_weight (records.py; the policy's default when unset); the
response budget is rollout.response_length. Each sample draws a fresh noise-key
sequence id, stored in extra_fields[SEQUENCE_ID] so that a rollout can be replayed exactly.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any
from uuid import uuid4

from verl.experimental.agent_loop.agent_loop import (
    AgentLoopBase,
    AgentLoopMetrics,
    AgentLoopOutput,
    register,
)
from verl.utils.profiler import simple_timer

from softgrpo.adapters.hf.inputs import think_end_ids
from softgrpo.philox import MAX_OFFSET
from softgrpo.rollout import SoftThinkingConfig

from .records import record_fields

AGENT_LOOP = "softgrpo_single_turn"
SEQUENCE_ID = "softgrpo_sequence_id"
SECTION = "softgrpo"
# fields of SoftThinkingConfig that verl's own settings provide
FROM_VERL = ("k", "top_p", "temperature", "max_new_tokens")
# settings of the section that choose the actor's soft-row score (carried with the records)
SCORE = ("likelihood", "conditional_weight")


def soft_config(section: dict | None, sampling_params: dict[str, Any],
                response_length: int) -> SoftThinkingConfig:
    """The SoftThinkingConfig of a request: verl's top_k / top_p / temperature and
    response_length, plus the ``softgrpo`` section's soft-thinking settings.

    Raises:
        ValueError: the section sets one of the fields verl provides, names an unknown
            setting, or verl's top_k is disabled (-1 or 0: soft thinking needs K >= 1)."""
    section = {key: value for key, value in dict(section or {}).items() if key not in SCORE}
    taken = sorted(set(section) & set(FROM_VERL))
    if taken:
        raise ValueError(f"{SECTION}.{taken} come from verl's rollout config (rollout.top_k, "
                         "top_p, temperature, response_length); remove them from the "
                         f"{SECTION} section")
    if section.get("noise_clamp") is not None:
        section["noise_clamp"] = tuple(section["noise_clamp"])
    k = int(sampling_params.get("top_k", -1))
    if k < 1:
        raise ValueError(f"soft thinking needs actor_rollout_ref.rollout.top_k >= 1 (the "
                         f"soft-token width K), got {k}")
    try:
        config = SoftThinkingConfig(k=k, top_p=float(sampling_params.get("top_p", 1.0)),
                                    temperature=float(sampling_params.get("temperature", 1.0)),
                                    max_new_tokens=int(response_length), **section)
    except TypeError as error:
        raise ValueError(f"the {SECTION} section: {error}") from error
    if config.multiplex and config.top_p < 1.0:
        raise ValueError(f"with {SECTION}.soft_policy 'multiplex' rollout.top_k is the number "
                         f"of draws K and the filter is {SECTION}.multiplex_top_k / "
                         f"multiplex_top_p: set rollout.top_p to 1 (got {config.top_p})")
    return config


def eos_ids(tokenizer, model_path: str | None) -> list[int]:
    """The tokenizer's EOS id and, when the model directory has one, its
    generation_config.json's eos ids (the ids the HF and vLLM adapters end a row on)."""
    from transformers import GenerationConfig

    ids = set() if tokenizer.eos_token_id is None else {int(tokenizer.eos_token_id)}
    if model_path and (Path(model_path) / "generation_config.json").exists():
        extra = GenerationConfig.from_pretrained(model_path).eos_token_id
        if extra is not None:
            ids.update(int(i) for i in ([extra] if isinstance(extra, int) else extra))
    if not ids:
        raise ValueError("the tokenizer has no EOS token: a soft-thinking rollout would never end")
    return sorted(ids)


@register(AGENT_LOOP)
class SoftThinkingAgentLoop(AgentLoopBase):
    """Single-turn soft-thinking rollout (the chat-templated prompt of ``raw_prompt``)."""

    async def run(self, sampling_params: dict[str, Any], **kwargs) -> AgentLoopOutput:
        from softgrpo.adapters.vllm.processor import sampling_options  # needs vLLM

        from .rollout import RECORDS

        messages = list(kwargs["raw_prompt"])
        if await self.process_multi_modal_info(messages):
            raise NotImplementedError(f"{AGENT_LOOP} does not support multimodal prompts")
        prompt_ids = await self.ct_build_initial_tokens(messages)
        response_length = self.rollout_config.response_length
        config = soft_config(self.config.get(SECTION), sampling_params, response_length)
        think_end = think_end_ids(self.tokenizer, config.think_end, len(self.tokenizer))
        sequence_id = secrets.randbelow(MAX_OFFSET + 1)
        tag = uuid4().hex
        options = sampling_options(config, sequence_id, think_end,
                                   eos_ids(self.tokenizer, self.config.actor_rollout_ref.model.get(
                                       "local_path") or self.config.actor_rollout_ref.model.path),
                                   tag)
        metrics = {}
        with simple_timer("generate_sequences", metrics):
            output = await self.server_manager.generate(
                request_id=uuid4().hex, prompt_ids=prompt_ids, sampling_params=options)
        records = output.extra_fields.pop(RECORDS, None)
        if records is None:
            raise RuntimeError(f"the rollout server returned no soft-thinking records: run "
                               f"{AGENT_LOOP} with actor_rollout_ref.rollout.name=softgrpo_vllm")
        if records["token"] != list(output.token_ids):
            raise RuntimeError("softgrpo: the records do not match the tokens the server "
                               "returned")
        metrics["num_preempted"] = output.num_preempted if output.num_preempted is not None \
            else -1
        length = min(len(records["token"]), response_length)
        score = {key: value for key, value in (self.config.get(SECTION) or {}).items()
                 if key in SCORE}
        fields = record_fields(records["ids"][:length], records["perturbed"][:length], config,
                               kept=records["kept"][:length] if config.kept_width else None,
                               **score)
        return AgentLoopOutput(
            prompt_ids=prompt_ids, response_ids=records["token"][:length],
            # tokens forced by max_thinking_tokens stay in the context but out of the loss
            response_mask=[0 if forced else 1 for forced in records["forced"][:length]],
            num_turns=2, metrics=AgentLoopMetrics(**metrics),
            extra_fields={**output.extra_fields, **fields, SEQUENCE_ID: sequence_id,
                          "turn_scores": [], "tool_rewards": []})
