"""Model Runner V2 (vllm.v1.worker.gpu, vLLM >= 0.31; the only runner from 0.34): the model
state that feeds soft inputs, and the engine checks.

The soft-input model class names :class:`SoftModelState` as its model state
(get_model_state_cls). When the runner adds a request to a slot, the state binds the slot to
the request's :class:`~.state.RequestState` (a recomputed request comes back with its output
tokens and gets its records back); before each forward, prepare_inputs embeds the step's
tokens into a persistent buffer, replaces every soft position by the model's embedding of its
record and hands the buffer to the forward as ``inputs_embeds`` (vLLM's in-tree precedent:
longcat_flash_ngram's model state). The dummy runs that capture CUDA graphs get the same
buffer, so a replayed graph reads the inputs prepare_inputs wrote: CUDA graphs work. When
the runner removes a request (finished or preempted, before its slot is freed) the slot is
unbound; the records stay in the registry until softgrpo_take.
"""

from __future__ import annotations

from typing import Any

import torch
from vllm.v1.worker.gpu.model_states.default import DefaultModelState

from .processor import SoftThinkingLogitsProcessor, find, parse
from .state import SoftRuntime


class SoftModelState(DefaultModelState):
    """DefaultModelState whose prepare_inputs returns ``inputs_embeds`` with the soft
    positions replaced. ``runtime`` is the logits processor's, linked by :func:`attach`;
    until then (vLLM's start-up runs) the inputs are the token embeddings."""

    supports_prompt_embeds = False  # the buffer is built from token ids

    def __init__(self, vllm_config, model, encoder_cache, device) -> None:
        super().__init__(vllm_config, model, encoder_cache, device)
        self.runtime: SoftRuntime | None = None
        self.slots: dict[str, int] = {}
        self.soft_embeds = torch.zeros(self.max_num_tokens, self.inputs_embeds_size,
                                       dtype=self.dtype, device=device)

    def add_request(self, req_index: int, new_req_data) -> None:
        super().add_request(req_index, new_req_data)
        if self.runtime is None:
            return
        prompt = new_req_data.prompt_len
        fed = len(new_req_data.prefill_token_ids or ())
        state = self.runtime.state_for(parse(new_req_data.sampling_params), prompt,
                                       fed - prompt)
        self.slots[new_req_data.req_id] = req_index
        if state is None:
            self.runtime.rows.pop(req_index, None)
        else:
            self.runtime.rows[req_index] = state

    def remove_request(self, req_id: str) -> None:
        super().remove_request(req_id)
        slot = self.slots.pop(req_id, None)
        if slot is not None and self.runtime is not None:
            self.runtime.rows.pop(slot, None)

    def prepare_inputs(self, input_batch, req_states) -> dict[str, Any]:
        inputs = super().prepare_inputs(input_batch, req_states)
        n = input_batch.num_tokens
        embeds = self.soft_embeds[:n]
        embeds.copy_(self.model.embed_input_ids(input_batch.input_ids[:n]))
        runtime = self.runtime
        if runtime is not None and runtime.rows:
            rows = {row: runtime.rows[slot]
                    for row, slot in enumerate(input_batch.idx_mapping_np[:input_batch.num_reqs]
                                               .tolist()) if slot in runtime.rows}
            if rows:
                runtime.soft_inputs(embeds, input_batch.positions[:n],
                                    input_batch.query_start_loc_np.tolist(), rows)
        inputs["inputs_embeds"] = self.soft_embeds[:input_batch.num_tokens_after_padding]
        return inputs

    def prepare_dummy_inputs(self, num_reqs: int, num_tokens: int) -> dict[str, Any]:
        inputs = super().prepare_dummy_inputs(num_reqs, num_tokens)
        inputs["inputs_embeds"] = self.soft_embeds[:num_tokens]
        return inputs


def processor(model_runner) -> SoftThinkingLogitsProcessor:
    """The engine's soft-thinking logits processor (RuntimeError unless exactly one)."""
    return find(getattr(getattr(model_runner, "sampler", None), "logits_processors", ()))


def attach(model_runner, runtime: SoftRuntime) -> None:
    """Link the runner's model state to the processor's ``runtime`` (RuntimeError when the
    model state is not :class:`SoftModelState`: the model class does not feed soft inputs)."""
    state = model_runner.model_state
    feeds_soft_inputs = isinstance(state, SoftModelState)
    if not feeds_soft_inputs:
        raise RuntimeError(f"the model state {type(state).__name__} of "
                           f"{type(model_runner.model).__name__} does not feed soft inputs "
                           "(pass hf_overrides from engine_options())")
    state.runtime = runtime
