"""vLLM model classes that feed soft inputs, built from the checkpoint's own vLLM architecture
class when the engine is created: ``SoftGRPO<Architecture>`` subclasses vLLM's class for
``<Architecture>`` (any text decoder vLLM has), so the checkpoint, its weight loading and every
kernel stay vLLM's own; only the input embedding of soft-thinking positions changes, to the
model's own embedding of the record, sum_j w_j E[ids_j] (spec 2.8).

How the soft inputs reach the model depends on the runner:
- V1 runner: the class's forward embeds the token ids and replaces the soft positions (the
  batch layout from the runner's query_start_loc, see runner_v1);
- Model Runner V2: the class names its model state (get_model_state_cls), a DefaultModelState
  whose prepare_inputs hands the forward ``inputs_embeds`` with the soft positions replaced
  (runner_v2.SoftModelState); the forward is the stock one.

Classes are registered in vLLM's ModelRegistry and selected with
``hf_overrides={"architectures": ["SoftGRPO<Architecture>"]}`` (engine.engine_options).
"""

from __future__ import annotations

import torch
from vllm import ModelRegistry

from ..hf.embeddings import TableEmbedder
from .state import SoftRuntime

PREFIX = "SoftGRPO"
_PROBE_IDS = 16
_classes: dict[str, type] = {}


class SoftInputsMixin:
    """Put first in the bases of a vLLM causal LM with forward(input_ids, positions,
    intermediate_tensors, inputs_embeds) and embed_input_ids.

    ``softgrpo_runtime`` is attached by the worker extension under the V1 runner; until then
    (vLLM's start-up profiling runs) and under Model Runner V2 the forward is the stock one.
    The model is always run on embeddings, so a compiled body sees one kind of input."""

    softgrpo_runtime: SoftRuntime | None = None

    @staticmethod
    def get_model_state_cls() -> type:
        """Model Runner V2's per-model state (vllm.v1.worker.gpu.model_states)."""
        from .runner_v2 import SoftModelState

        return SoftModelState

    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor,
                intermediate_tensors=None, inputs_embeds: torch.Tensor | None = None,
                **kwargs):
        if inputs_embeds is None and input_ids is not None:
            inputs_embeds = self.embed_input_ids(input_ids)
        runtime = self.softgrpo_runtime
        if runtime is not None and inputs_embeds is not None:
            runtime.last_position = {}
            if runtime.rows:
                inputs_embeds = runtime.soft_inputs(inputs_embeds, positions,
                                                    runtime.batch_layout(), runtime.rows)
        return super().forward(None, positions, intermediate_tensors, inputs_embeds, **kwargs)


def _unsupported(base: type) -> str | None:
    """Why vLLM's class ``base`` cannot take soft inputs, None if it can."""
    from vllm.model_executor.models import interfaces
    from vllm.model_executor.models.interfaces_base import is_text_generation_model

    if not is_text_generation_model(base):
        return "not a text-generation model"
    checks = {"a multimodal": interfaces.supports_multimodal, "a hybrid": interfaces.is_hybrid,
              "an attention-free": interfaces.is_attention_free,
              "a stateful (inner state)": interfaces.has_inner_state}
    for kind, check in checks.items():
        if check(base):
            return f"{kind} model"
    if "get_model_state_cls" in dir(base):
        return "its inputs are prepared by its own Model Runner V2 state"
    if not callable(getattr(base, "embed_input_ids", None)):
        return "it has no embed_input_ids"
    return None


def soft_class(architecture: str) -> type:
    """``SoftGRPO<architecture>``: vLLM's class for ``architecture`` fed soft inputs (built
    once per process).

    Raises:
        ValueError: vLLM cannot load a class for it, or the class is not a text decoder whose
            inputs are token embeddings (multimodal, hybrid/state-space, attention-free, or
            one with its own Model Runner V2 state)."""
    if architecture not in _classes:
        base = ModelRegistry._try_load_model_cls(architecture)
        if base is None:
            raise ValueError(f"this vLLM has no loadable model class for the architecture "
                             f"{architecture!r} (vLLM's log says why)")
        reason = _unsupported(base)
        if reason is not None:
            raise ValueError(f"architecture {architecture!r} cannot take soft inputs: {reason} "
                             "(soft thinking needs a text decoder whose inputs are token "
                             "embeddings)")
        name = PREFIX + architecture
        _classes[architecture] = type(name, (SoftInputsMixin, base), {
            "__module__": __name__, "__qualname__": name,
            "__doc__": f"vLLM's {base.__name__} fed soft inputs."})
    return _classes[architecture]


def __getattr__(name: str) -> type:
    # vLLM's lazy registrations ("softgrpo.adapters.vllm.model:SoftGRPO<arch>") and pickle
    # import the classes by name: build them on first use.
    if name.startswith(PREFIX):
        return soft_class(name[len(PREFIX):])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register(architecture: str | None = None) -> str | None:
    """Register soft classes with vLLM's ModelRegistry (idempotent). With ``architecture``:
    build ``SoftGRPO<architecture>`` now and register it (returns its name; ValueError as
    :func:`soft_class`). Without: register every other architecture vLLM knows lazily, by
    name, so that a worker process (which imports this module through the worker extension
    before it builds the model) resolves whichever soft class its engine was created with."""
    if architecture is not None:
        cls = soft_class(architecture)
        ModelRegistry.register_model(cls.__name__, cls)
        return cls.__name__
    known = set(ModelRegistry.get_supported_archs())
    for arch in sorted(known):
        if not arch.startswith(PREFIX) and PREFIX + arch not in known:
            ModelRegistry.register_model(PREFIX + arch, f"{__name__}:{PREFIX}{arch}")
    return None


def input_embedder(model: torch.nn.Module) -> TableEmbedder:
    """The model's input embedding as (table, scale): its one vocabulary embedding module that
    is not an LM head, and the constant by which ``model.embed_input_ids`` scales the table's
    rows (Gemma's sqrt(H); None for a plain lookup), read off a few ids.

    Raises ValueError when the model has no such module, or embed_input_ids is not a scaled
    row of it."""
    from vllm.model_executor.layers.vocab_parallel_embedding import (
        ParallelLMHead,
        VocabParallelEmbedding,
    )

    modules = {id(m): m for m in model.modules()
               if isinstance(m, (VocabParallelEmbedding, torch.nn.Embedding))
               and not isinstance(m, ParallelLMHead)}
    if len(modules) != 1:
        raise ValueError(f"{type(model).__name__} has {len(modules)} token-embedding modules; "
                         "soft inputs need exactly one")
    module = next(iter(modules.values()))
    table = module.weight
    ids = torch.arange(min(_PROBE_IDS, table.shape[0]), device=table.device)
    with torch.no_grad():
        rows, out = table[ids], model.embed_input_ids(ids)
    scale = None
    if not torch.equal(rows, out):
        kept = rows != 0
        # out = round(row * s): the ratio rounds back to s in the table's dtype for almost
        # every element (its error is below half an ulp of s); the most frequent one is s
        values, counts = (out[kept].double() / rows[kept].double()).to(rows.dtype).unique(
            return_counts=True)
        scale = values[counts.argmax()] if values.numel() else None
    return TableEmbedder(module, model.embed_input_ids, scale)
