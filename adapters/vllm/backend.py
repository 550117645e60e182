"""The trainer's rollout engine on vLLM, and loading updated policy weights into an engine."""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Mapping

import torch
import vllm
from vllm.v1.engine.core_client import InprocClient

from softgrpo.rollout import Rollout, SoftThinkingConfig

from .engine import create_engine
from .generate import generate


def load_weights(llm: vllm.LLM, weights: torch.nn.Module | Mapping[str, torch.Tensor]) -> None:
    """Copy a policy's weights into the engine in place, through vLLM's worker
    ``reload_weights`` with checkpoint-format names (a Hugging Face state dict). An
    in-process engine reads the tensors directly; an engine in other processes receives them
    as one torch.save blob (vLLM's messages do not carry tensors nested in arguments).

    Raises:
        TypeError: weights is neither a module nor a mapping of tensors."""
    if isinstance(weights, torch.nn.Module):
        weights = weights.state_dict()
    if not isinstance(weights, Mapping):
        raise TypeError(f"weights must be a torch.nn.Module or a state dict, got "
                        f"{type(weights).__name__}")
    pairs = {name: tensor.detach() for name, tensor in weights.items()}
    if isinstance(llm.llm_engine.engine_core, InprocClient):
        llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(pairs.items())})
    else:
        blob = io.BytesIO()
        torch.save(pairs, blob)
        llm.collective_rpc("softgrpo_load_weights", args=(blob.getvalue(),))


class VLLMRolloutBackend:
    """softgrpo.rollout.RolloutBackend on a vLLM engine.

    Args:
        model: a checkpoint directory, or a Hugging Face model (saved with ``tokenizer`` to a
            temporary directory that the backend keeps while it lives).
        tokenizer: the Hugging Face tokenizer (default: the engine's).
        progress: vLLM's progress bar. engine_kwargs: passed to :func:`create_engine`.
    """

    def __init__(self, model: str | os.PathLike | torch.nn.Module, tokenizer=None, *,
                 progress: bool = False, **engine_kwargs):
        self._checkpoint = None
        if isinstance(model, torch.nn.Module):
            if tokenizer is None:
                raise ValueError("a model object needs its tokenizer (saved beside it)")
            self._checkpoint = tempfile.TemporaryDirectory(prefix="softgrpo-vllm-")
            model.save_pretrained(self._checkpoint.name)
            tokenizer.save_pretrained(self._checkpoint.name)
            model = self._checkpoint.name
        self.llm = create_engine(model, **engine_kwargs)
        self.tokenizer = tokenizer
        self.progress = progress

    def generate(self, prompts: list[str], config: SoftThinkingConfig,
                 sequence_ids: torch.Tensor | None = None) -> Rollout:
        return generate(self.llm, self.tokenizer, prompts, config, sequence_ids=sequence_ids,
                        progress=self.progress)

    def load_weights(self, model: torch.nn.Module) -> None:
        load_weights(self.llm, model)
