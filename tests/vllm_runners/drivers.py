"""Both model runners' request bookkeeping, driven by hand around the adapter's pieces with
vLLM's own classes, the way vllm/v1/worker/gpu_model_runner.py (V1) and
vllm/v1/worker/gpu/model_runner.py (V2) drive them. No engine: vLLM's forward and sampler
need its compiled kernels (CUDA, Triton), which this machine does not have for these wheels.

The model is :class:`HFDecoder`, a vLLM-interface model class (registered in vLLM's
ModelRegistry, so the adapter builds its soft class from it like from any architecture) that
runs the tiny Hugging Face checkpoint with one KV cache per request. Each step the driver
schedules like vLLM's scheduler under pressure: requests wait for room (V2 slots are recycled,
last freed first; V1 rows are filled, condensed and swapped by vLLM's own persistent batch),
prompts are prefilled in chunks within a token budget, the rows come in a new random order
every step, and chosen requests are preempted (KV cache dropped) and recomputed later from
prompt + output tokens. Sampling is greedy, as the adapter's requests ask: the argmax of the
processed logits; a row still in chunked prefill produces no token.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import itertools
import random
from types import SimpleNamespace

import numpy as np
import torch
from transformers import AutoModelForCausalLM, DynamicCache
from vllm import ModelRegistry
from vllm.config import DeviceConfig, ModelConfig, SchedulerConfig, VllmConfig

from softgrpo.adapters.hf.inputs import eos_token_ids, prepare_prompts
from softgrpo.adapters.vllm.generate import requests_of, rollout_of
from softgrpo.adapters.vllm.model import soft_class
from softgrpo.adapters.vllm.processor import SoftThinkingLogitsProcessor
from softgrpo.adapters.vllm.worker import link
from softgrpo.rollout import Rollout, SoftThinkingConfig

CPU = torch.device("cpu")
ARCHITECTURE = "HFDecoderForCausalLM"


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


V1 = _has("vllm.v1.sample.logits_processor")  # the runners this vLLM has
V2 = _has("vllm.v1.worker.gpu.sample.logits_processor")


class HFDecoder(torch.nn.Module):
    """A vLLM model class (VllmModelForTextGeneration's interface) running a Hugging Face
    checkpoint: embed_input_ids is the checkpoint's input-embedding module (Gemma's scale
    included); forward runs the flattened batch row by row, each row on its request's KV
    cache (``spans``: (cache, start, end) per row, set by the driver), and returns the
    logits of every token; compute_logits passes them through."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        self.hf = AutoModelForCausalLM.from_pretrained(vllm_config.model_config.model).eval()
        self.spans: list[tuple[DynamicCache, int, int]] = []

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.hf.get_input_embeddings()(input_ids)

    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor,
                intermediate_tensors=None, inputs_embeds: torch.Tensor | None = None):
        if inputs_embeds is None:
            inputs_embeds = self.embed_input_ids(input_ids)
        out = []
        for cache, start, end in self.spans:
            with torch.no_grad():
                out.append(self.hf(inputs_embeds=inputs_embeds[start:end][None],
                                   position_ids=positions[start:end][None],
                                   past_key_values=cache, use_cache=True).logits[0].float())
        return torch.cat(out)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states


def _register() -> None:
    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, HFDecoder)


def _keywords(target, **candidates) -> dict:
    """The ``candidates`` that ``target``'s signature accepts (vLLM versions add and drop
    constructor arguments)."""
    accepted = inspect.signature(target).parameters
    return {k: v for k, v in candidates.items() if k in accepted}


@dataclasses.dataclass
class _Request:
    req_id: str
    prompt: list[int]
    params: object
    outputs: list[int] = dataclasses.field(default_factory=list)
    computed: int = 0  # tokens in the KV cache
    cache: DynamicCache | None = None

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.outputs


class Driver:
    """The scheduling loop both runners share; subclasses do the runner's bookkeeping
    (_add, _remove, _step). Has the attributes the adapter's linking reads from a runner:
    get_model(), and V1's input_batch / query_start_loc or V2's model_state / sampler."""

    v2: bool

    def __init__(self, checkpoint, *, max_num_reqs: int = 3, budget: int = 12,
                 max_model_len: int = 128, seed: int = 0):
        _register()
        self.vllm_config = VllmConfig(
            model_config=ModelConfig(model=str(checkpoint), dtype="float32",
                                     max_model_len=max_model_len, enforce_eager=True,
                                     hf_overrides={"architectures": [ARCHITECTURE]}),
            scheduler_config=SchedulerConfig(max_num_seqs=max_num_reqs,
                                             max_num_batched_tokens=budget,
                                             max_model_len=max_model_len,
                                             is_encoder_decoder=False),
            device_config=DeviceConfig("cpu"))
        self.model = soft_class(ARCHITECTURE)(vllm_config=self.vllm_config)
        self.max_num_reqs, self.budget = max_num_reqs, budget
        self.rng = random.Random(seed)
        self.preemptions = 0
        self.logits: list[torch.Tensor] = []  # each step's logits as the processor got them

    def get_model(self) -> torch.nn.Module:
        return self.model

    def _forward(self, scheduled: list[tuple[_Request, int, int]], input_ids: torch.Tensor,
                 positions: torch.Tensor, inputs_embeds: torch.Tensor | None) -> torch.Tensor:
        """(rows, V) logits of each scheduled row's last token; the caches advance."""
        spans, start = [], 0
        for request, _, n in scheduled:
            spans.append((request.cache, start, start + n))
            start += n
        self.model.spans = spans
        hidden = self.model(input_ids=input_ids, positions=positions, intermediate_tensors=None,
                            inputs_embeds=inputs_embeds)
        return self.model.compute_logits(hidden[[end - 1 for _, _, end in spans]])

    @staticmethod
    def _inputs(scheduled: list[tuple[_Request, int, int]]) -> tuple[list[int], list[int]]:
        ids, positions = [], []
        for request, _, n in scheduled:
            ids += request.tokens[request.computed:request.computed + n]
            positions += range(request.computed, request.computed + n)
        return ids, positions

    def _sample(self, logits: torch.Tensor) -> list[int]:
        self.logits.append(logits.clone())
        return logits.argmax(-1).tolist()

    def run(self, tokenizer, prompts: list[str], config: SoftThinkingConfig,
            sequence_ids: torch.Tensor, preempt_steps: tuple[int, ...] = ()) -> Rollout:
        """Soft-thinking rollouts of ``prompts`` through the runner's bookkeeping; the same
        Rollout softgrpo.adapters.vllm.generate returns. At each step in ``preempt_steps`` the
        running request with the most outputs (the first by id on a tie) is preempted."""
        return self.run_together(tokenizer, [(prompts, config, sequence_ids)], preempt_steps)[0]

    def run_together(self, tokenizer, jobs: list[tuple[list[str], SoftThinkingConfig,
                                                       torch.Tensor]],
                     preempt_steps: tuple[int, ...] = ()) -> list[Rollout]:
        """:meth:`run` for several (prompts, config, sequence ids) at once: their requests
        share the batches (as a server's concurrent generate calls do); one Rollout each."""
        batches, tag_lists, requests = [], [], []
        for prompts, config, sequence_ids in jobs:
            batch = prepare_prompts(tokenizer, prompts, config, None, None, sequence_ids,
                                    vocab_size=self.model.hf.config.vocab_size,
                                    max_length=(self.vllm_config.model_config.max_model_len,
                                                "max_model_len"),
                                    eos_ids=eos_token_ids(self.model.hf, tokenizer),
                                    device="cpu")
            token_prompts, params, tags = requests_of(batch, config)
            batches.append(batch)
            tag_lists.append(tags)
            requests.append([_Request(f"req-{len(requests)}-{i}", list(p["prompt_token_ids"]),
                                      q) for i, (p, q) in enumerate(zip(token_prompts, params))])
        waiting = [request for group in itertools.zip_longest(*requests)  # interleaved
                   for request in group if request is not None]
        running: dict[str, tuple[_Request, int]] = {}
        step = 0
        while waiting or running:
            step += 1
            preempted = []
            if step in preempt_steps and running:
                request, key = max(running.values(),
                                   key=lambda rk: (len(rk[0].outputs), rk[0].req_id))
                del running[request.req_id]
                self._remove(request, key, preempted=True)
                preempted.append(request)
                self.preemptions += 1
            while waiting and len(running) < self.max_num_reqs:
                request = waiting.pop(0)
                request.computed, request.cache = 0, DynamicCache()
                running[request.req_id] = (request, self._add(request))
            waiting = preempted + waiting  # recomputed from the next step on
            order = list(running.values())
            self.rng.shuffle(order)  # rows reorder every step
            scheduled, left = [], self.budget
            for request, key in order:
                n = min(len(request.tokens) - request.computed, left)
                if n > 0:
                    scheduled.append((request, key, n))
                    left -= n
            sampled = self._step(scheduled)
            for (request, key, n), token in zip(scheduled, sampled):
                request.computed += n
                if request.computed < len(request.tokens):
                    continue  # chunked prefill: no token
                request.outputs.append(token)
                params = request.params
                if token in params.stop_token_ids or len(request.outputs) == params.max_tokens:
                    del running[request.req_id]  # finished, removed before the next step
                    self._remove(request, key, preempted=False)
        return [rollout_of(batch, config, [r.outputs for r in job],
                           self.runtime.take(tags), tags, tokenizer)
                for batch, (_, config, _), job, tags in zip(batches, jobs, requests, tag_lists)]


class V2Driver(Driver):
    """Model Runner V2: the model state vLLM resolves for the model class (the adapter's
    SoftModelState through get_model_state_cls), request slots, InputBatch, and the logits
    processor on a LogitsContext (model_runner.add_requests / finish_requests /
    execute_model / sample_tokens)."""

    v2 = True

    def __init__(self, checkpoint, **kwargs):
        from vllm.v1.worker.gpu.input_batch import InputBuffers
        from vllm.v1.worker.gpu.model_states import init_model_state

        super().__init__(checkpoint, **kwargs)
        self.model_state = init_model_state(self.vllm_config, self.model, None, CPU)
        self.processor = SoftThinkingLogitsProcessor(self.vllm_config, None)
        self.sampler = SimpleNamespace(logits_processors=[self.processor])
        self.runtime = link(self, v2=True)
        self.buffers = InputBuffers(self.max_num_reqs, self.budget, CPU)
        self.free = list(range(self.max_num_reqs))
        self.slot_uses: dict[int, int] = {}

    def _add(self, request: _Request) -> int:
        from vllm.v1.core.sched.output import NewRequestData

        slot = self.free.pop()
        data = NewRequestData(req_id=request.req_id, prompt_token_ids=request.prompt,
                              mm_features=[], sampling_params=request.params,
                              pooling_params=None, block_ids=([],), num_computed_tokens=0,
                              lora_request=None, prefill_token_ids=request.tokens)
        self.model_state.add_request(slot, data)
        self.processor.add_request(slot, request.params)
        self.slot_uses[slot] = self.slot_uses.get(slot, 0) + 1
        return slot

    def _remove(self, request: _Request, slot: int, preempted: bool) -> None:
        self.model_state.remove_request(request.req_id)
        self.free.append(slot)

    def _step(self, scheduled: list[tuple[_Request, int, int]]) -> list[int]:
        from vllm.v1.worker.gpu.input_batch import InputBatch
        from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext

        ids, positions = self._inputs(scheduled)
        counts = [n for _, _, n in scheduled]
        batch = InputBatch.make_dummy(len(scheduled), len(ids), self.buffers, is_padding=False)
        batch.input_ids[:len(ids)] = torch.tensor(ids, dtype=batch.input_ids.dtype)
        batch.positions[:len(ids)] = torch.tensor(positions)
        slots = np.array([slot for _, slot, _ in scheduled], dtype=np.intp)
        locations = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
        mapping = torch.from_numpy(slots).long()
        batch = dataclasses.replace(
            batch, req_ids=[r.req_id for r, _, _ in scheduled], idx_mapping=mapping,
            idx_mapping_np=slots, expanded_idx_mapping=mapping,
            num_scheduled_tokens=np.array(counts, dtype=np.int32),
            query_start_loc=torch.from_numpy(locations), query_start_loc_np=locations,
            logits_indices=torch.from_numpy(locations[1:] - 1).long())
        inputs = {"input_ids": batch.input_ids, "positions": batch.positions,
                  "inputs_embeds": None, **self.model_state.prepare_inputs(batch, None)}
        logits = self._forward(scheduled, inputs["input_ids"][:len(ids)],
                               inputs["positions"][:len(ids)], inputs["inputs_embeds"])
        last = batch.logits_indices
        ctx = LogitsContext(
            expanded_idx_mapping=batch.expanded_idx_mapping, idx_mapping=batch.idx_mapping,
            idx_mapping_np=batch.idx_mapping_np,
            expanded_local_pos=torch.zeros(len(scheduled), dtype=torch.int32),
            input_ids=batch.input_ids[last], pos=batch.positions[last],
            seq_lens_upper_bound_np=batch.positions[last].numpy() + 1)
        return self._sample(self.processor.apply(logits, ctx))


class V1Driver(Driver):
    """The V1 runner: vLLM's persistent InputBatch (rows filled, removed, condensed and
    swapped, its BatchUpdates reaching the logits processor through refresh_metadata), the
    runner's query_start_loc buffer, the model's own forward (the soft class's), and the
    logits processor on the rows' logits (gpu_model_runner._update_states / _prepare_inputs
    / execute_model, the sampler's logits processors)."""

    v2 = False

    def __init__(self, checkpoint, **kwargs):
        from vllm.v1.sample.logits_processor import LogitsProcessors
        from vllm.v1.worker import gpu_input_batch
        from vllm.v1.worker.gpu_input_batch import InputBatch

        # A CUDA wheel on this GPU-less machine assumes pinned host memory (its platform is
        # unspecified); what vLLM's CPU platform sets, so the persistent batch can be built
        gpu_input_batch.PIN_MEMORY = torch.cuda.is_available()
        super().__init__(checkpoint, **kwargs)
        self.processor = SoftThinkingLogitsProcessor(self.vllm_config, CPU, False)
        model_len, n = self.vllm_config.model_config.max_model_len, self.max_num_reqs
        self.input_batch = InputBatch(**_keywords(
            InputBatch.__init__, max_num_reqs=n, max_model_len=model_len,
            max_num_batched_tokens=self.budget, device=CPU, pin_memory=False,
            vocab_size=self.model.hf.config.vocab_size, block_sizes=[16],
            kernel_block_sizes=[16], max_num_blocks_per_req=[model_len // 16],
            logitsprocs=LogitsProcessors([self.processor])))
        self.query_start_loc = SimpleNamespace(np=np.zeros(n + 1, dtype=np.int32))
        self.runtime = link(self, v2=False)
        self.cached: dict[str, object] = {}  # req_id -> CachedRequestState

    def _add(self, request: _Request) -> str:
        from vllm.v1.worker.gpu_input_batch import CachedRequestState

        self.cached[request.req_id] = CachedRequestState(**_keywords(
            CachedRequestState, req_id=request.req_id, prompt_token_ids=request.prompt,
            mm_features=[], sampling_params=request.params, generator=None,
            block_ids=([],), num_computed_tokens=0, output_token_ids=list(request.outputs)))
        return request.req_id

    def _remove(self, request: _Request, req_id: str, preempted: bool) -> None:
        del self.cached[req_id]
        if req_id in self.input_batch.req_id_to_index:
            self.input_batch.remove_request(req_id)

    def _step(self, scheduled: list[tuple[_Request, str, int]]) -> list[int]:
        batch = self.input_batch
        wanted = {req_id for _, req_id, _ in scheduled}
        for req_id in list(batch.req_id_to_index):  # unscheduled requests leave the batch
            if req_id not in wanted:
                batch.remove_request(req_id)
        for request, req_id, _ in scheduled:
            if req_id not in batch.req_id_to_index:
                cached = self.cached[req_id]
                cached.output_token_ids[:] = request.outputs
                batch.add_request(cached)
        batch.condense()
        if batch.num_reqs > 1:  # the runner's reorder (decode rows first) swaps rows
            batch.swap_states(*self.rng.sample(range(batch.num_reqs), 2))
        batch.refresh_metadata()
        by_id = {req_id: (request, req_id, n) for request, req_id, n in scheduled}
        rows = [by_id[req_id] for req_id in batch.req_ids]  # the persistent batch's order
        ids, positions = self._inputs(rows)
        self.query_start_loc.np[0] = 0
        self.query_start_loc.np[1:len(rows) + 1] = np.cumsum([n for _, _, n in rows])
        logits = self._forward(rows, torch.tensor(ids), torch.tensor(positions), None)
        sampled = dict(zip(batch.req_ids, self._sample(self.processor.apply(logits))))
        return [sampled[req_id] for _, req_id, _ in scheduled]
