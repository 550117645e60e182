"""The vLLM logits processor that samples every soft-thinking step, for both model runners.

A request opts in with ``SamplingParams.extra_args["softgrpo"]`` (see :func:`request_payload`).
Each step the processor runs softgrpo.soft_sample (the gumbel policy) or
softgrpo.multiplex_sample (the multiplex policy, spec 10) on the logits of the rows whose
step is real (not a partial prefill), with the request's noise key and its response position
as offset, drives the thinking phase (think-end detection, forced think-end, to_discrete) with
the same per-row logic as the Hugging Face adapter, stores the records in the request's
:class:`~.state.RequestState`, and forces vLLM's sampler to emit the step's text token by
leaving that token the only finite logit.

One class implements both of vLLM's logits-processor interfaces, whichever the installed
vLLM has (the V1 runner's vllm.v1.sample.logits_processor up to 0.33, Model Runner V2's
vllm.v1.worker.gpu.sample.logits_processor from 0.31), so the same engine options serve the
runner vLLM picks. Only the bookkeeping differs (which rows are due); :func:`sample_rows` is
the one sampling step both call, so given the same logits both runners store the same records
bit for bit.
"""

from __future__ import annotations

import dataclasses
import importlib
import math

import torch
from vllm import SamplingParams

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


def parse(params: SamplingParams | None
          ) -> tuple[SoftThinkingConfig, int, tuple[int, ...], str] | None:
    """The request's (config, sequence id, think-end ids, tag), None for an ordinary request
    (or none: a pooling request has no sampling params); ValueError naming the bad option
    otherwise."""
    if params is None:
        return None
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
    parsed = parse(params)
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


def sample_rows(logits: torch.Tensor, due: list[tuple[int, RequestState, int]]) -> None:
    """The soft-thinking step of the logits rows ``due`` ((row, state, response position t),
    see SoftRuntime.due), in place: rows grouped by (config, think-end ids) load their phases
    into the shared per-row phase logic (softgrpo.rollout.ThinkingPhase: soft_sample, or
    multiplex_sample for the multiplex policy, with the request's noise key and offset t, as
    the Hugging Face adapter keys them), store the records, write the phases back, and leave
    the step's text token the only finite logit. The one sampling step of both runners."""
    groups: dict[tuple, list[tuple[int, RequestState, int]]] = {}
    for item in due:
        groups.setdefault((item[1].config, item[1].think_end), []).append(item)
    for (config, think_end), items in groups.items():
        n, device = len(items), logits.device
        rows = torch.tensor([row for row, _, _ in items], device=device)
        states = [state for _, state, _ in items]
        phase = ThinkingPhase(list(think_end), n, config, device)
        phase.thinking = torch.tensor([s.thinking for s in states], device=device)
        phase.steps = torch.tensor([s.thinking_steps for s in states], device=device)
        phase.forced_at = torch.tensor([s.forced_at for s in states], device=device)
        phase.tracker.window = torch.stack([s.window for s in states]).to(device)
        keys = torch.tensor([s.key for s in states], dtype=torch.int64, device=device)
        offsets = torch.tensor([t for _, _, t in items], device=device)
        sample, soft, forced = phase.step(logits[rows], keys, torch.arange(n, device=device),
                                          offsets)
        ids, perturbed = sample.ids.cpu(), sample.perturbed.cpu()
        kept = [None] * n if phase.kept is None else phase.kept.cpu()  # multiplex kept sets
        tokens, logprobs = sample.token.tolist(), sample.logprob.tolist()
        soft, forced = soft.tolist(), forced.tolist()
        thinking, steps = phase.thinking.tolist(), phase.steps.tolist()
        forced_at, windows = phase.forced_at.tolist(), phase.tracker.window.cpu()
        for i, state in enumerate(states):
            state.append(ids[i], perturbed[i], kept[i], tokens[i], logprobs[i], soft[i],
                         forced[i])
            state.thinking, state.thinking_steps = thinking[i], steps[i]
            state.forced_at, state.window = forced_at[i], windows[i]
        logits[rows] = -math.inf
        logits[rows, sample.token.to(device)] = 0.0


def _interfaces() -> tuple[type, ...]:
    """The logits-processor base classes the installed vLLM has: the V1 runner's (vLLM <=
    0.33), Model Runner V2's (vLLM >= 0.31), or both."""
    bases = []
    for module in ("vllm.v1.sample.logits_processor",
                   "vllm.v1.worker.gpu.sample.logits_processor"):
        try:
            bases.append(importlib.import_module(module).LogitsProcessor)
        except ImportError:
            continue
    return tuple(bases)


def find(processors) -> SoftThinkingLogitsProcessor:
    """The one SoftThinkingLogitsProcessor among an engine's logits processors
    (RuntimeError unless exactly one)."""
    found = [p for p in processors if isinstance(p, SoftThinkingLogitsProcessor)]
    if len(found) != 1:
        raise RuntimeError(f"the engine has {len(found)} SoftThinkingLogitsProcessor (need "
                           "exactly one; pass logits_processors from engine_options())")
    return found[0]


_NOT_LOADED = ("softgrpo: a soft-thinking request reached the sampler but the model did not "
               "see it; create the engine with softgrpo.adapters.vllm.create_engine or "
               "engine_options(), which load the soft-input model")


class SoftThinkingLogitsProcessor(*_interfaces()):
    """Samples soft-thinking steps (softgrpo.soft_sample or multiplex_sample, by the request's
    soft_policy) under either model runner.

    V1 runner: vLLM calls ``__init__(vllm_config, device, is_pin_memory)``, ``update_state``
    with the persistent batch's add/remove/move events and ``apply(logits)`` on the batch
    rows. Model Runner V2: ``__init__(vllm_config, req_states)``, ``add_request(slot,
    params)`` and ``apply(logits, ctx)`` with ``ctx.expanded_idx_mapping`` mapping rows to
    request slots (rows reorder every step, slots are recycled; the soft-input model state
    binds each slot to its request's state when the request is added, just before this
    processor's add_request). Not argmax-invariant: it replaces a soft request's logits by a
    one-hot choice of the step's text token; ordinary requests in the batch are untouched."""

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        validate(sampling_params)

    def __init__(self, vllm_config, *runner_args) -> None:
        self.runtime = SoftRuntime()

    # -- V1 runner ------------------------------------------------------------------------
    def is_argmax_invariant(self) -> bool:
        return False

    def update_state(self, batch_update) -> None:
        from vllm.v1.sample.logits_processor.builtin import process_dict_updates

        process_dict_updates(self.runtime.rows, batch_update, lambda params, prompt, output:
                             self.runtime.state_for(parse(params), len(prompt or ()),
                                                    len(output)))

    # -- Model Runner V2 ------------------------------------------------------------------
    def add_request(self, req_idx: int, sampling_params: SamplingParams) -> bool:
        parsed = parse(sampling_params)
        if parsed is None:
            return False
        state = self.runtime.rows.get(req_idx)
        if state is None or state.tag != parsed[3]:
            raise RuntimeError(_NOT_LOADED)
        return True

    # -- both -----------------------------------------------------------------------------
    def apply(self, logits: torch.Tensor, ctx=None) -> torch.Tensor:
        if not self.runtime.rows:
            return logits
        if ctx is None:  # V1: the batch rows, with the positions the model's forward saw
            last = self.runtime.last_position
            if any(row not in last for row in self.runtime.rows):
                raise RuntimeError(_NOT_LOADED)
            rows = [(row, state, last[row]) for row, state in self.runtime.rows.items()]
        else:  # V2: logits rows -> request slots, with the position of each row's input
            if ctx.expanded_idx_mapping.shape[0] != ctx.idx_mapping.shape[0]:
                raise RuntimeError("softgrpo: several logits rows per request (speculative "
                                   "decoding) are not supported")
            slots, positions = ctx.expanded_idx_mapping.tolist(), ctx.pos.tolist()
            rows = [(row, self.runtime.rows[slot], position)
                    for row, (slot, position) in enumerate(zip(slots, positions))
                    if slot in self.runtime.rows]
        sample_rows(logits, self.runtime.due(rows))
        return logits
