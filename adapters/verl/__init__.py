"""SofT-GRPO inside verl 0.9.1: a verl plugin.

Importing this module registers, with verl's own registries,
- the policy loss "softgrpo" (actor.policy_loss.loss_mode=softgrpo), and
- the engine model_type "softgrpo" (actor_rollout_ref.model.model_type=softgrpo): verl's
  FSDP/FSDP2 LM engine with the input embeddings rebuilt from soft-thinking records and the
  log-probs computed from the last hidden states (spec section 4),
- the rollout name "softgrpo_vllm" (actor_rollout_ref.rollout.name=softgrpo_vllm): verl's vLLM
  rollout server with softgrpo's soft-input model class and logits processor, returning each
  request's records (rollout.py), and
- the agent loop "softgrpo_single_turn" (rollout.agent.default_agent_loop): one soft-thinking
  rollout per sample, records in AgentLoopOutput.extra_fields (agent_loop.py).
verl imports it in every process (driver and Ray workers) through its plugin mechanism: the
"verl.plugins" entry point of the softgrpo package, or VERL_USE_EXTERNAL_MODULES=
softgrpo.adapters.verl. Rollouts carry the records in AgentLoopOutput.extra_fields
(agent_loop_output / agent_loop_fields for a softgrpo Rollout from another backend).
"""

from .agent_loop import AGENT_LOOP, SEQUENCE_ID, SoftThinkingAgentLoop
from .engine import MODEL_TYPE, SoftGRPOFSDPEngine
from .forward import add_soft_forward, soft_forward
from .loss import LOSS_MODE, softgrpo_policy_loss
from .records import (
    CONDITIONAL_WEIGHT,
    KEPT,
    KEYS,
    LIKELIHOOD,
    NOISE_CLAMP,
    NOISE_SCALE,
    PERTURBED,
    POLICY,
    TAU,
    TEMPERATURE,
    TOPK_IDS,
    WEIGHTING,
    agent_loop_fields,
    agent_loop_output,
    pack,
    record_fields,
)
from .registration import ROLLOUT_NAME, register_rollout

register_rollout()

__all__ = [
    "AGENT_LOOP",
    "CONDITIONAL_WEIGHT",
    "KEPT",
    "KEYS",
    "LIKELIHOOD",
    "LOSS_MODE",
    "MODEL_TYPE",
    "NOISE_CLAMP",
    "NOISE_SCALE",
    "PERTURBED",
    "POLICY",
    "ROLLOUT_NAME",
    "SEQUENCE_ID",
    "TAU",
    "TEMPERATURE",
    "TOPK_IDS",
    "WEIGHTING",
    "SoftGRPOFSDPEngine",
    "SoftThinkingAgentLoop",
    "add_soft_forward",
    "agent_loop_fields",
    "agent_loop_output",
    "pack",
    "record_fields",
    "register_rollout",
    "soft_forward",
    "softgrpo_policy_loss",
]
