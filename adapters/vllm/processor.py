"""The vLLM (V1 runner) logits processor that samples every soft-thinking step.

A request opts in with ``SamplingParams.extra_args["softgrpo"]`` (see :func:`request_payload`).
Each step the processor runs softgrpo.soft_sample on the logits of the rows whose step is
real (not a partial prefill), with the request's noise key and its response position as
offset, drives the thinking phase (think-end detection, forced think-end, to_discrete) with
the same per-row logic as the Hugging Face adapter, stores the records in the request's
:class:`~.state.RequestState`, and forces vLLM's sampler to emit the step's text token by
leaving that token the only finite logit.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

from softgrpo.philox import MAX_OFFSET
from softgrpo.rollout import SoftThinkingConfig, ThinkingPhase

from .state import RequestState, SoftRuntime

KEY = "softgrpo"


def request_payload(config: SoftThinkingConfig, sequence_id: int, think_end: list[int],
                    tag: str) -> dict:
    """The ``extra_args`` entry of one soft-thinking request (plain msgspec-able values)."""
    return {KEY: {"config": dataclasses.asdict(config), "sequence_id": int(sequence_id),
                  "think_end": [int(i) for i in think_end], "tag": str(tag)}}


def sampling_options(config: SoftThinkingConfig, sequence_id: int, think_end: list[int],
                     eos_ids: list[int], tag: str) -> dict:
    """The ``vllm.SamplingParams`` keyword arguments of one soft-thinking request: greedy (the
    processor leaves one finite logit, the step's text token), EOS handling ours (ignore_eos,
    stop on ``eos_ids``), max_tokens = config.max_new_tokens, the payload in extra_args. Plain
    values, so the dict can also travel to a server that builds the SamplingParams."""
    return dict(temperature=0.0, max_tokens=config.max_new_tokens, ignore_eos=True,
                stop_token_ids=[int(i) for i in eos_ids], detokenize=False,
                extra_args=request_payload(config, sequence_id, think_end, tag))


def _parse(params: SamplingParams) -> tuple[SoftThinkingConfig, int, tuple[int, ...], str] | None:
    """The request's (config, sequence id, think-end ids, tag), None for an ordinary request;
    ValueError naming the bad option otherwise."""
    payload = (params.extra_args or {}).get(KEY)
    if payload is None:
        return None
    if not isinstance(payload, dict) or set(payload) != {"config", "sequence_id",
                                                            "think_end", "tag"}:
        raise ValueError(f"extra_args[{KEY!r}] must be a dict with keys config, sequence_id, "
                         "think_end and tag (build it with softgrpo.adapters.vllm."
                         "request_payload)")
    fields = dict(payload["config"]) if isinstance(payload["config"], dict) else None
    if fields is None:
        raise ValueError(f"extra_args[{KEY!r}]['config'] must be a dict of "
                         "SoftThinkingConfig fields")
    if isinstance(fields.get("noise_clamp"), list):
        fields["noise_clamp"] = tuple(fields["noise_clamp"])
    try:
        config = SoftThinkingConfig(**fields)
    except TypeError as error:
        raise ValueError(f"extra_args[{KEY!r}]['config']: {error}") from error
    sequence_id, think_end, tag = payload["sequence_id"], payload["think_end"], payload["tag"]
    if isinstance(sequence_id, bool) or not isinstance(sequence_id, int) or \
            not 0 <= sequence_id <= MAX_OFFSET:
        raise ValueError(f"extra_args[{KEY!r}]['sequence_id'] must be an int in "
                         f"[0, {MAX_OFFSET}], got {sequence_id!r}")
    if not isinstance(think_end, list) or not think_end or \
            not all(isinstance(i, int) and i >= 0 for i in think_end):
        raise ValueError(f"extra_args[{KEY!r}]['think_end'] must be the non-empty token id "
                         f"list of config.think_end, got {think_end!r}")
    if not isinstance(tag, str) or not tag:
        raise ValueError(f"extra_args[{KEY!r}]['tag'] must be a non-empty string")
    return config, sequence_id, tuple(think_end), tag


def validate(params: SamplingParams) -> None:
    """Reject, at request time, options that would change what the processor samples from
    or how many sequences share one noise key."""
    parsed = _parse(params)
    if parsed is None:
        return
    config = parsed[0]
    if params.n != 1:
        raise ValueError(f"soft-thinking requests need SamplingParams.n == 1 (one request per "
                         f"sequence id), got n={params.n}")
    if params.max_tokens != config.max_new_tokens:
        raise ValueError(f"SamplingParams.max_tokens ({params.max_tokens}) must equal "
                         f"config.max_new_tokens ({config.max_new_tokens})")
    before = {"logit_bias": params.logit_bias, "allowed_token_ids": params.allowed_token_ids,
              "bad_words": params.bad_words, "structured_outputs": params.structured_outputs,
              "thinking_token_budget": params.thinking_token_budget}
    for name, value in before.items():
        if value:
            raise ValueError(f"SamplingParams.{name} would change the logits softgrpo samples "
                             "from; it is not supported with soft thinking")
    if params.min_tokens:
        raise ValueError("SamplingParams.min_tokens masks EOS before softgrpo samples; it is "
                         "not supported with soft thinking")


class SoftThinkingLogitsProcessor(LogitsProcessor):
    """Samples soft-thinking steps with softgrpo.soft_sample (V1 logits-processor interface).

    Not argmax-invariant: it replaces a soft request's logits by a one-hot choice of the
    step's text token. Ordinary requests in the same batch are left untouched."""

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        validate(sampling_params)

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:
        self.runtime = SoftRuntime()

    def is_argmax_invariant(self) -> bool:
        return False

    def _state(self, params: SamplingParams, prompt_ids: list[int] | None,
               output_ids: list[int]) -> RequestState | None:
        parsed = _parse(params)
        if parsed is None:
            return None
        config, sequence_id, think_end, tag = parsed
        state = self.runtime.states.get(tag)
        if state is None:
            state = RequestState(tag, config, sequence_id, think_end, len(prompt_ids or ()))
            self.runtime.states[tag] = state
        elif len(output_ids) != state.length:
            raise RuntimeError(f"softgrpo: request {tag} came back with {len(output_ids)} "
                               f"output tokens but {state.length} records")
        else:
            state.resumes += 1
        return state

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        process_dict_updates(self.runtime.rows, batch_update, self._state)

    def _due(self) -> list[tuple[int, RequestState, int]]:
        """(row, state, t) of the rows whose logits are a real step: the row's last position
        is the one after the request's last record (a partial prefill ends earlier)."""
        due = []
        for row, state in self.runtime.rows.items():
            last = self.runtime.last_position.get(row)
            if last is None:
                raise RuntimeError(
                    "softgrpo: a soft-thinking request reached the sampler but the model did "
                    "not see it; create the engine with softgrpo.adapters.vllm.create_engine "
                    "or engine_options(), which load the soft-input model")
            t = last + 1 - state.prompt_len
            if t > state.length:
                raise RuntimeError(f"softgrpo: request {state.tag} samples response position "
                                   f"{t} but has only {state.length} records")
            if t == state.length:
                due.append((row, state, t))
        return due

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.runtime.rows:
            return logits
        groups: dict[tuple, list[tuple[int, RequestState, int]]] = {}
        for item in self._due():
            groups.setdefault((item[1].config, item[1].think_end), []).append(item)
        for (config, think_end), items in groups.items():
            rows = torch.tensor([row for row, _, _ in items], device=logits.device)
            self._step(logits, rows, [state for _, state, _ in items],
                       torch.tensor([t for _, _, t in items]), config, think_end)
        return logits

    @staticmethod
    def _step(logits: torch.Tensor, rows: torch.Tensor, states: list[RequestState],
              offsets: torch.Tensor, config: SoftThinkingConfig,
              think_end: tuple[int, ...]) -> None:
        """One batched step of ``states`` (same config): load their phases into the shared
        per-row phase logic, sample, store the records, write the phases back, force the
        text tokens."""
        n, device = len(states), logits.device
        phase = ThinkingPhase(list(think_end), n, config, device)
        phase.thinking = torch.tensor([s.thinking for s in states], device=device)
        phase.steps = torch.tensor([s.thinking_steps for s in states], device=device)
        phase.forced_at = torch.tensor([s.forced_at for s in states], device=device)
        phase.tracker.window = torch.stack([s.window for s in states]).to(device)
        keys = torch.tensor([s.key for s in states], dtype=torch.int64, device=device)
        sample, soft, forced = phase.step(logits[rows], keys, torch.arange(n, device=device),
                                          offsets.to(device))
        ids, perturbed = sample.ids.cpu(), sample.perturbed.cpu()
        tokens, logprobs = sample.token.tolist(), sample.logprob.tolist()
        soft, forced = soft.tolist(), forced.tolist()
        thinking, steps = phase.thinking.tolist(), phase.steps.tolist()
        forced_at, windows = phase.forced_at.tolist(), phase.tracker.window.cpu()
        for i, state in enumerate(states):
            state.append(ids[i], perturbed[i], tokens[i], logprobs[i], soft[i], forced[i])
            state.thinking, state.thinking_steps = thinking[i], steps[i]
            state.forced_at, state.window = forced_at[i], windows[i]
        chosen = sample.token.to(device)
        logits[rows] = -math.inf
        logits[rows, chosen] = 0.0
