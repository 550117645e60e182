"""Input embeddings built with the semantics of the model's own input-embedding module.

Soft tokens need the embedding table (a mix of rows), but some models' embedding modules do
more than a row lookup: Gemma's scales its output by sqrt(H) (embed_scale), so a raw
``weight`` lookup would feed the wrong inputs. :class:`InputEmbedder` takes the table and the
scale from the module and checks, on a few ids, that ``module(ids)`` is exactly the scaled row.
"""

from __future__ import annotations

import torch

from softgrpo import SoftThinkingConfig, soft_embedding, soft_token_embedding
from softgrpo.ops.multiplex import multiplex_weights

_PROBE_IDS = 16


class InputEmbedder:
    """``model.get_input_embeddings()`` as (table, scale): module(ids) == table[ids] * scale.

    Raises ValueError for a module whose output is not a (scaled) row of its weight."""

    def __init__(self, model: torch.nn.Module):
        self.module = model.get_input_embeddings()
        table = getattr(self.module, "weight", None)
        if not isinstance(table, torch.Tensor) or table.dim() != 2:
            raise ValueError(f"the input-embedding module {type(self.module).__name__} has no "
                             "2-D weight table")
        self.table = table
        scale = getattr(self.module, "embed_scale", None)
        self.scale = None if scale is None else torch.as_tensor(scale, device=table.device)
        self._check_module()

    def _scaled(self, rows: torch.Tensor) -> torch.Tensor:
        # The same product in the same dtype as the scaled modules (Gemma*ScaledWordEmbedding).
        return rows if self.scale is None else rows * self.scale.to(rows.dtype)

    def _check_module(self) -> None:
        ids = torch.arange(min(_PROBE_IDS, self.table.shape[0]), device=self.table.device)
        with torch.no_grad():
            expected = self._scaled(self.table[ids])
            if not torch.equal(self.module(ids), expected):
                raise ValueError(
                    f"unsupported input-embedding module {type(self.module).__name__}: its "
                    "output is not a row of its weight times a constant embed_scale, so soft "
                    "tokens cannot be built from the table")

    def tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """(...) int64 token ids -> (..., H) embeddings in the table's dtype (the module)."""
        return self.module(ids)

    def records(self, ids: torch.Tensor, perturbed: torch.Tensor,
                config: SoftThinkingConfig) -> torch.Tensor:
        """(..., k) stored records -> (..., H) input embeddings, scaled like the module: with
        the gumbel policy (spec 2.8 / 4) soft rows sum_k softmax(perturbed / tau)_k E[ids_k],
        discrete rows [s, 0, ...] E[s]; with the multiplex policy (spec 10)
        sum_j multiplex_weights(perturbed)_j E[ids_j] (a discrete row: E[s]). Differentiable
        w.r.t. the table and perturbed (pathwise)."""
        if config.multiplex:
            weights = multiplex_weights(perturbed, config.multiplex_weighting)
            return self._scaled(soft_embedding(self.table, ids, weights))
        return self._scaled(soft_token_embedding(self.table, ids, perturbed, config.tau))
