"""SofT-GRPO inside verl 0.9.1: a verl plugin.

Importing this module registers, with verl's own registries,
- the policy loss "softgrpo" (actor.policy_loss.loss_mode=softgrpo), and
- the engine model_type "softgrpo" (actor_rollout_ref.model.model_type=softgrpo): verl's
  FSDP/FSDP2 LM engine with the input embeddings rebuilt from soft-thinking records and the
  log-probs computed from the last hidden states (spec section 4).
verl imports it in every process (driver and Ray workers) through its plugin mechanism: the
"verl.plugins" entry point of the softgrpo package, or VERL_USE_EXTERNAL_MODULES=
softgrpo.adapters.verl. Rollouts carry the records in AgentLoopOutput.extra_fields
(agent_loop_output / agent_loop_fields).
"""

from .engine import MODEL_TYPE, SoftGRPOFSDPEngine
from .forward import add_soft_forward, soft_forward
from .loss import LOSS_MODE, softgrpo_policy_loss
from .records import (
    KEYS,
    NOISE_CLAMP,
    PERTURBED,
    TAU,
    TEMPERATURE,
    TOPK_IDS,
    agent_loop_fields,
    agent_loop_output,
    pack,
)

__all__ = [
    "KEYS",
    "LOSS_MODE",
    "MODEL_TYPE",
    "NOISE_CLAMP",
    "PERTURBED",
    "TAU",
    "TEMPERATURE",
    "TOPK_IDS",
    "SoftGRPOFSDPEngine",
    "add_soft_forward",
    "agent_loop_fields",
    "agent_loop_output",
    "pack",
    "soft_forward",
    "softgrpo_policy_loss",
]
