"""Model Runner V2's request bookkeeping driven by hand around the adapter's soft-input model
state and logits processor, with vLLM's own classes: VllmConfig, SamplingParams (from the
adapter's requests_of, as generate sends them), NewRequestData, InputBatch and LogitsContext,
built the way vllm/v1/worker/gpu/model_runner.py builds them (execute_model: finish, add,
prepare_inputs; sample_tokens: the sampler's logits processors on a LogitsContext).

The forward is the tiny Hugging Face model, one KV cache per request: vLLM's own forward and
sampler need its compiled kernels (CUDA, Triton), which this machine does not have. Each step
the driver schedules like vLLM's scheduler does under pressure: requests wait for a free slot
(slots are recycled, last freed first), prompts are prefilled in chunks within a token budget,
the batch rows come in a new random order every step, and chosen requests are preempted
(their slot freed and KV cache dropped) and later recomputed from prompt + output tokens.
Greedy sampling (the adapter sends temperature 0): vLLM's sampler takes the argmax of the
processed logits; a row still in chunked prefill produces no token.
"""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import torch
from transformers import DynamicCache
from vllm.config import DeviceConfig, ModelConfig, SchedulerConfig, VllmConfig
from vllm.v1.core.sched.output import NewRequestData
from vllm.v1.worker.gpu.input_batch import InputBatch, InputBuffers
from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext

from softgrpo.adapters.hf.inputs import eos_token_ids, prepare_prompts
from softgrpo.adapters.vllm.generate import requests_of, rollout_of
from softgrpo.adapters.vllm.processor import SoftThinkingLogitsProcessor
from softgrpo.adapters.vllm.runner_v2 import SoftModelState
from softgrpo.adapters.vllm.worker import link
from softgrpo.rollout import Rollout, SoftThinkingConfig

CPU = torch.device("cpu")


class HFModel(torch.nn.Module):
    """The Hugging Face model behind the two things a vLLM model offers the model state:
    embed_input_ids (its own input-embedding module, Gemma's scale included)."""

    def __init__(self, hf: torch.nn.Module):
        super().__init__()
        self.hf = hf

    def embed_input_ids(self, ids: torch.Tensor) -> torch.Tensor:
        return self.hf.get_input_embeddings()(ids)


@dataclasses.dataclass
class _Request:
    req_id: str
    prompt: list[int]
    params: object
    outputs: list[int] = dataclasses.field(default_factory=list)
    prefill: int = 0        # tokens fed at the latest (re)fill: prompt + outputs so far
    computed: int = 0       # tokens in the KV cache
    cache: DynamicCache | None = None


class V2Driver:
    """What Model Runner V2 does with the adapter's pieces, step by step (see the module
    docstring). Has the attributes softgrpo's linking reads from a runner: model,
    model_state, sampler.logits_processors."""

    def __init__(self, hf: torch.nn.Module, checkpoint, *, max_num_reqs: int = 3,
                 budget: int = 12, max_model_len: int = 128, seed: int = 0):
        self.hf = hf
        self.vllm_config = VllmConfig(
            model_config=ModelConfig(model=str(checkpoint), dtype="float32",
                                     max_model_len=max_model_len, enforce_eager=True),
            scheduler_config=SchedulerConfig(max_num_seqs=max_num_reqs,
                                             max_num_batched_tokens=budget,
                                             max_model_len=max_model_len,
                                             is_encoder_decoder=False),
            device_config=DeviceConfig("cpu"))
        self.model = HFModel(hf)
        self.model_state = SoftModelState(self.vllm_config, self.model, None, CPU)
        processor = SoftThinkingLogitsProcessor(self.vllm_config, None)
        self.sampler = type("Sampler", (), {"logits_processors": [processor]})()
        self.processor = processor
        self.runtime = link(self, v2=True)
        self.max_num_reqs, self.budget = max_num_reqs, budget
        self.buffers = InputBuffers(max_num_reqs, budget, CPU)
        self.rng = random.Random(seed)
        self.free = list(range(max_num_reqs))
        self.slot_uses: dict[int, int] = {}
        self.preemptions = 0

    def get_model(self) -> torch.nn.Module:
        return self.model

    # -- the runner's add / remove (model_runner.add_requests / finish_requests) ----------
    def _add(self, request: _Request) -> int:
        slot = self.free.pop()
        request.prefill, request.computed = len(request.prompt) + len(request.outputs), 0
        request.cache = DynamicCache()
        data = NewRequestData(req_id=request.req_id, prompt_token_ids=request.prompt,
                              mm_features=[], sampling_params=request.params,
                              pooling_params=None, block_ids=([],), num_computed_tokens=0,
                              lora_request=None,
                              prefill_token_ids=request.prompt + request.outputs)
        self.model_state.add_request(slot, data)
        self.processor.add_request(slot, request.params)
        self.slot_uses[slot] = self.slot_uses.get(slot, 0) + 1
        return slot

    def _remove(self, request: _Request, slot: int) -> None:
        self.model_state.remove_request(request.req_id)
        self.free.append(slot)
        request.cache = None

    # -- one step: schedule, InputBatch, model state inputs, forward, LogitsContext -------
    def _batch(self, scheduled: list[tuple[_Request, int, int]]) -> InputBatch:
        """The InputBatch of (request, slot, tokens) in this order, as prepare_inputs lays
        it out: each row's tokens are its next ones from its cache length on."""
        ids, positions, counts = [], [], []
        for request, _, n in scheduled:
            tokens = request.prompt + request.outputs
            ids += tokens[request.computed:request.computed + n]
            positions += range(request.computed, request.computed + n)
            counts.append(n)
        num_reqs, num_tokens = len(scheduled), len(ids)
        batch = InputBatch.make_dummy(num_reqs, num_tokens, self.buffers, is_padding=False)
        slots = np.array([slot for _, slot, _ in scheduled], dtype=np.intp)
        locations = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
        batch.input_ids[:num_tokens] = torch.tensor(ids, dtype=batch.input_ids.dtype)
        batch.positions[:num_tokens] = torch.tensor(positions)
        mapping = torch.from_numpy(slots).long()
        return dataclasses.replace(
            batch, req_ids=[r.req_id for r, _, _ in scheduled], idx_mapping=mapping,
            idx_mapping_np=slots, expanded_idx_mapping=mapping,
            num_scheduled_tokens=np.array(counts, dtype=np.int32),
            query_start_loc=torch.from_numpy(locations),
            query_start_loc_np=locations,
            logits_indices=torch.from_numpy(locations[1:] - 1).long())

    def _forward(self, batch: InputBatch, embeds: torch.Tensor,
                 scheduled: list[tuple[_Request, int, int]]) -> torch.Tensor:
        """(num_reqs, V) logits of each row's last token, each request on its own cache."""
        rows = []
        for i, (request, _, _) in enumerate(scheduled):
            start, end = int(batch.query_start_loc_np[i]), int(batch.query_start_loc_np[i + 1])
            with torch.no_grad():
                out = self.hf(inputs_embeds=embeds[start:end][None],
                              position_ids=batch.positions[start:end][None],
                              past_key_values=request.cache, use_cache=True)
            rows.append(out.logits[0, -1].float())
        return torch.stack(rows)

    def run(self, tokenizer, prompts: list[str], config: SoftThinkingConfig,
            sequence_ids: torch.Tensor, preempt_steps: tuple[int, ...] = ()) -> Rollout:
        """Soft-thinking rollouts of ``prompts`` through the V2 bookkeeping; the same Rollout
        softgrpo.adapters.vllm.generate returns. At each step in ``preempt_steps`` the
        running request with the most outputs is preempted."""
        batch = prepare_prompts(tokenizer, prompts, config, None, None, sequence_ids,
                                vocab_size=self.hf.config.vocab_size,
                                max_length=(self.vllm_config.model_config.max_model_len,
                                            "max_model_len"),
                                eos_ids=eos_token_ids(self.hf, tokenizer), device="cpu")
        tokens_prompts, params, tags = requests_of(batch, config)
        waiting = [_Request(f"req-{i}", list(p["prompt_token_ids"]), q)
                   for i, (p, q) in enumerate(zip(tokens_prompts, params))]
        requests = list(waiting)
        running: dict[str, tuple[_Request, int]] = {}
        step = 0
        while waiting or running:
            step += 1
            preempted = []
            if step in preempt_steps and running:
                request, slot = max(running.values(), key=lambda rs: len(rs[0].outputs))
                del running[request.req_id]
                self._remove(request, slot)
                preempted.append(request)
                self.preemptions += 1
            while waiting and self.free:  # add_requests
                request = waiting.pop(0)
                running[request.req_id] = (request, self._add(request))
            waiting = preempted + waiting  # recomputed from the next step on
            order = list(running.values())
            self.rng.shuffle(order)  # rows reorder every step
            scheduled, left = [], self.budget
            for request, slot in order:
                n = min(len(request.prompt) + len(request.outputs) - request.computed, left)
                if n > 0:
                    scheduled.append((request, slot, n))
                    left -= n
            input_batch = self._batch(scheduled)
            inputs = self.model_state.prepare_inputs(input_batch, None)
            logits = self._forward(input_batch, inputs["inputs_embeds"], scheduled)
            index = input_batch.logits_indices
            ctx = LogitsContext(
                expanded_idx_mapping=input_batch.expanded_idx_mapping,
                idx_mapping=input_batch.idx_mapping, idx_mapping_np=input_batch.idx_mapping_np,
                expanded_local_pos=torch.zeros(len(scheduled), dtype=torch.int32),
                input_ids=input_batch.input_ids[index], pos=input_batch.positions[index],
                seq_lens_upper_bound_np=input_batch.positions[index].numpy() + 1)
            sampled = self.processor.apply(logits, ctx).argmax(-1).tolist()
            for (request, slot, n), token in zip(scheduled, sampled):
                request.computed += n
                if request.computed < len(request.prompt) + len(request.outputs):
                    continue  # chunked prefill: no token
                request.outputs.append(token)
                params = request.params
                if token in params.stop_token_ids or len(request.outputs) == params.max_tokens:
                    del running[request.req_id]  # finish_requests, before the next step
                    self._remove(request, slot)
        taken = self.runtime.take(tags)
        return rollout_of(batch, config, [r.outputs for r in requests], taken, tags, tokenizer)
