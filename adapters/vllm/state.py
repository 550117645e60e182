"""Per-request soft-thinking state inside the vLLM worker, shared by both model runners, the
soft-input path and the logits processor.

Everything is keyed by the request's own tag (carried in SamplingParams.extra_args), never by
where the runner keeps it: a :class:`SoftRuntime` maps the runner's current keys (the V1
runner's persistent-batch rows, rebuilt from its BatchUpdate add/remove/move events; Model
Runner V2's request slots, bound when a request is added) to :class:`RequestState` objects,
and each state holds its phase and every record it produced. A request that is preempted
and later recomputed from its tokens (both runners drop its KV cache) is bound again to the
same state, so its soft inputs are replayed from the stored records (the decision for
preemption: replay, never resample).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from softgrpo import noise_key
from softgrpo.rollout import SoftThinkingConfig

_INITIAL_STEPS = 64


class RequestState:
    """One request: its noise key, phase (thinking, thinking steps, forced think-end index,
    think-end window) and growing per-step records (text token, the (k,) ids and perturbed
    values: the gumbel policy's top-k ids and perturbed log-probs, or the multiplex policy's
    draws and their log-probs, from which the mix weights follow; the multiplex filter's
    (W,) kept set, W = config.kept_width; rollout log-prob, soft-row and forced flags)."""

    def __init__(self, tag: str, config: SoftThinkingConfig, sequence_id: int,
                 think_end: tuple[int, ...], prompt_len: int):
        self.tag, self.config, self.think_end = tag, config, think_end
        self.prompt_len = prompt_len
        self.key = noise_key(config.seed, sequence_id)
        self.thinking, self.thinking_steps, self.forced_at = True, 0, -1
        self.window = torch.full((len(think_end),), -1, dtype=torch.int64)
        self.resumes = 0  # times vLLM re-added the request (preempted, then recomputed)
        self.token: list[int] = []
        self.logprob: list[float] = []
        self.soft: list[bool] = []
        self.forced: list[bool] = []
        capacity = min(_INITIAL_STEPS, config.max_new_tokens)
        self.ids = torch.zeros(capacity, config.k, dtype=torch.int64)
        self.perturbed = torch.zeros(capacity, config.k)
        self.kept = torch.full((capacity, config.kept_width), -1, dtype=torch.int64)

    @property
    def length(self) -> int:
        return len(self.token)

    def append(self, ids: torch.Tensor, perturbed: torch.Tensor, kept: torch.Tensor | None,
               token: int, logprob: float, soft: bool, forced: bool) -> None:
        """Store step ``self.length``: its (k,) ids and perturbed values, its (W,) kept set
        (None when W = 0) and the rest."""
        t = self.length
        if t == self.ids.shape[0]:  # grow the buffers by doubling
            more = min(2 * t, self.config.max_new_tokens) - t
            self.ids, self.perturbed, self.kept = [
                torch.cat([buffer, buffer.new_full((more, buffer.shape[1]), fill)])
                for buffer, fill in ((self.ids, 0), (self.perturbed, 0.0), (self.kept, -1))]
        self.ids[t], self.perturbed[t] = ids, perturbed
        if kept is not None:
            self.kept[t] = kept
        self.token.append(token)
        self.logprob.append(logprob)
        self.soft.append(soft)
        self.forced.append(forced)

    def records(self) -> dict[str, list | int]:
        """The records of the steps so far as plain lists (they cross vLLM's process
        boundaries by msgpack, which does not keep tensors nested in a result)."""
        n = self.length
        return {"token": self.token, "ids": self.ids[:n].tolist(),
                "perturbed": self.perturbed[:n].tolist(), "kept": self.kept[:n].tolist(),
                "logprob": self.logprob, "soft": self.soft, "forced": self.forced,
                "resumes": self.resumes}


# records (n, k) ids, (n, k) perturbed values, their config -> (n, H) input embeddings
# (TableEmbedder.records_of)
RecordEmbedder = Callable[[torch.Tensor, torch.Tensor, SoftThinkingConfig], torch.Tensor]


@dataclass
class SoftRuntime:
    """The worker-side registry: states by tag, the runner's keys (V1 batch rows, V2 request
    slots) that hold soft requests, and, set when the engine is attached, the model's record
    -> input-embedding map. V1 runner only: the batch rows' token offsets in the current
    forward (batch_layout) and the last position each row reached in it (written by the
    model, read by the logits processor to tell a real sampling step from a partial prefill;
    Model Runner V2 hands the processor the positions itself)."""

    states: dict[str, RequestState] = field(default_factory=dict)
    rows: dict[int, RequestState] = field(default_factory=dict)
    embed_records: RecordEmbedder | None = None
    batch_layout: Callable[[], list[int]] | None = None
    last_position: dict[int, int] = field(default_factory=dict)

    def state_for(self, parsed, prompt_len: int, outputs: int) -> RequestState | None:
        """The state of a request the runner (re-)adds: ``parsed`` is processor.parse's
        (config, sequence id, think-end ids, tag), None for an ordinary request; ``outputs``
        the output tokens it comes back with (non-zero after preemption: they must be
        exactly its records, which its recompute replays)."""
        if parsed is None:
            return None
        config, sequence_id, think_end, tag = parsed
        state = self.states.get(tag)
        if state is None:
            state = RequestState(tag, config, sequence_id, think_end, prompt_len)
            self.states[tag] = state
        elif outputs != state.length or prompt_len != state.prompt_len:
            raise RuntimeError(f"softgrpo: request {tag} came back with {outputs} output "
                               f"tokens after a prompt of {prompt_len} but has {state.length} "
                               f"records after a prompt of {state.prompt_len}")
        else:
            state.resumes += 1
        return state

    def take(self, tags: list[str]) -> dict[str, dict]:
        """Remove and return the records of ``tags`` (missing tags are left out)."""
        return {tag: self.states.pop(tag).records() for tag in tags if tag in self.states}

    def due(self, rows: list[tuple[int, RequestState, int]]
            ) -> list[tuple[int, RequestState, int]]:
        """(logits row, state, t) of the rows whose logits are a real step, from (logits row,
        state, position of the row's last input token): response position t = last + 1 -
        prompt length is due when it is the request's next record (a row still in chunked
        prefill ends earlier and is skipped; vLLM discards its sample)."""
        due = []
        for row, state, last in rows:
            t = last + 1 - state.prompt_len
            if t > state.length:
                raise RuntimeError(f"softgrpo: request {state.tag} samples response position "
                                   f"{t} but has only {state.length} records")
            if t == state.length:
                due.append((row, state, t))
        return due

    def soft_inputs(self, embeds: torch.Tensor, positions: torch.Tensor,
                    query_start_loc: list[int], rows: dict[int, RequestState]) -> torch.Tensor:
        """Replace, in the flattened token batch ``embeds`` (N, H), the input of every soft
        request's position P + t whose record t is a soft row by the model's embedding of the
        record (sum_j w_j E[ids_j], spec 2.8 and 10, the weights by each request's config:
        requests of several configs, policies or widths k can share the batch); record each
        batch row's last position.
        ``query_start_loc``: the batch rows' token offsets; ``rows``: batch row -> state of
        the rows that hold soft requests."""
        self.last_position = {}
        where, picks = [], []
        for row, state in rows.items():
            if row + 1 >= len(query_start_loc):
                raise RuntimeError(f"softgrpo: batch row {row} holds a soft-thinking request "
                                   f"but the forward has {len(query_start_loc) - 1} rows")
            start, end = query_start_loc[row], query_start_loc[row + 1]
            if end == start:
                continue
            first, last = int(positions[start]), int(positions[end - 1])
            if last - first != end - start - 1:
                raise RuntimeError("softgrpo: a batch row's positions are not consecutive; "
                                   "this vLLM runner lays tokens out differently")
            self.last_position[row] = last
            prompt = state.prompt_len
            if last - prompt + 1 > state.length:
                raise RuntimeError(f"softgrpo: request {state.tag} feeds response position "
                                   f"{last - prompt} but only {state.length} records exist")
            for t in range(max(first - prompt, 0), last - prompt + 1):
                if state.soft[t]:
                    where.append(start + prompt + t - first)
                    picks.append((state, t))
        groups: dict[SoftThinkingConfig, list[int]] = {}
        for i, (state, _) in enumerate(picks):
            groups.setdefault(state.config, []).append(i)
        for config, members in groups.items():
            ids = torch.stack([picks[i][0].ids[picks[i][1]] for i in members])
            perturbed = torch.stack([picks[i][0].perturbed[picks[i][1]] for i in members])
            soft = self.embed_records(ids, perturbed, config)
            embeds[torch.tensor([where[i] for i in members], device=embeds.device)] = \
                soft.to(embeds.dtype)
        return embeds
