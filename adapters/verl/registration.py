"""The rollout name "softgrpo_vllm" in verl's registries: the replica class the server manager
starts (RolloutReplicaRegistry, loaded lazily: it imports vLLM) and the hybrid rollout adapter
the training workers sync weights through (verl's own vLLM ServerAdapter)."""

from __future__ import annotations

from verl.workers.rollout import base as rollout_base
from verl.workers.rollout.replica import RolloutReplica, RolloutReplicaRegistry

ROLLOUT_NAME = "softgrpo_vllm"


def _replica() -> type[RolloutReplica]:
    from .rollout import SoftGRPOvLLMReplica

    return SoftGRPOvLLMReplica


def register_rollout() -> None:
    """Register ROLLOUT_NAME (idempotent)."""
    RolloutReplicaRegistry.register(ROLLOUT_NAME, _replica)
    # verl keeps its hybrid rollout adapters in a plain dict (it has no register function)
    rollout_base._ROLLOUT_REGISTRY[(ROLLOUT_NAME, "async")] = \
        rollout_base._ROLLOUT_REGISTRY[("vllm", "async")]
