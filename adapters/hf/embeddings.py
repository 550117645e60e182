"""Input embeddings built with the semantics of the model's own input-embedding module.

Soft tokens need the embedding table (a mix of rows), but some models' embedding modules do
more than a row lookup: Gemma's scales its output by sqrt(H) (embed_scale), so a raw
``weight`` lookup would feed the wrong inputs. :class:`TableEmbedder` holds the table and the
scale and checks, on a few ids, that the model's lookup is exactly the scaled row;
:class:`InputEmbedder` takes both from a Hugging Face model's embedding module.
"""

from __future__ import annotations

import torch

from softgrpo import SoftThinkingConfig, soft_embedding, soft_token_embedding
from softgrpo.ops.multiplex import multiplex_weights

_PROBE_IDS = 16


class TableEmbedder:
    """An input-embedding function that is a table lookup times a constant:
    ``lookup(ids) == table[ids] * scale`` (scale None: 1), checked on a few ids. Soft
    tokens are mixes of table rows (spec 2.8), scaled like ``lookup``. Shared by the Hugging
    Face adapter (:class:`InputEmbedder`) and the vLLM adapter (its models' embed_input_ids).

    Args:
        module: the module whose 2-D ``weight`` is the table (read at every use, so a
            reloaded weight is seen).
        lookup: ids -> embeddings (the model's own input-embedding function).
        scale: the constant (a 0-d tensor or number), None for none.

    Raises ValueError for a module without a 2-D weight, or a lookup that is not
    ``table[ids] * scale``."""

    def __init__(self, module: torch.nn.Module, lookup, scale):
        self.module, self.lookup = module, lookup
        table = getattr(module, "weight", None)
        if not isinstance(table, torch.Tensor) or table.dim() != 2:
            raise ValueError(f"the input-embedding module {type(module).__name__} has no "
                             "2-D weight table")
        self.scale = None if scale is None else torch.as_tensor(scale, device=table.device)
        self._check()

    @property
    def table(self) -> torch.Tensor:
        return self.module.weight

    def _scaled(self, rows: torch.Tensor) -> torch.Tensor:
        # The same product in the same dtype as the scaled modules (Gemma*ScaledWordEmbedding).
        return rows if self.scale is None else rows * self.scale.to(rows.dtype)

    def _check(self) -> None:
        ids = torch.arange(min(_PROBE_IDS, self.table.shape[0]), device=self.table.device)
        with torch.no_grad():
            if not torch.equal(self.lookup(ids), self._scaled(self.table[ids])):
                raise ValueError(
                    f"unsupported input-embedding module {type(self.module).__name__}: its "
                    "output is not a row of its weight times a constant embed_scale, so soft "
                    "tokens cannot be built from the table")

    def tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """(...) int64 token ids -> (..., H) embeddings in the table's dtype (the lookup)."""
        return self.lookup(ids)

    def records(self, ids: torch.Tensor, perturbed: torch.Tensor, tau: float) -> torch.Tensor:
        """(..., k) stored records -> (..., H) input embeddings (spec 2.8 / 4): soft rows
        sum_k softmax(perturbed / tau)_k E[ids_k], discrete rows [s, 0, ...] E[s]; scaled like
        the lookup. Differentiable w.r.t. the table and perturbed (pathwise)."""
        return self._scaled(soft_token_embedding(self.table, ids, perturbed, tau))

    def records_of(self, ids: torch.Tensor, perturbed: torch.Tensor,
                   config: SoftThinkingConfig) -> torch.Tensor:
        """(..., k) stored records of a rollout with ``config`` -> (..., H) input embeddings:
        :meth:`records` for the gumbel policy; for the multiplex policy (spec 10)
        sum_j multiplex_weights(perturbed)_j E[ids_j] (a discrete row: E[s]), scaled like the
        lookup."""
        if not config.multiplex:
            return self.records(ids, perturbed, config.tau)
        weights = multiplex_weights(perturbed, config.multiplex_weighting)
        return self._scaled(soft_embedding(self.table, ids, weights))


class InputEmbedder(TableEmbedder):
    """``model.get_input_embeddings()`` as (table, scale): module(ids) == table[ids] * scale,
    the scale being the module's ``embed_scale`` (Gemma's sqrt(H)).

    Raises ValueError for a module whose output is not a (scaled) row of its weight."""

    def __init__(self, model: torch.nn.Module):
        module = model.get_input_embeddings()
        super().__init__(module, module, getattr(module, "embed_scale", None))
