"""Row selection of a Rollout (the trainer's micro-batches)."""

from __future__ import annotations

import dataclasses

import torch

from softgrpo.rollout import Rollout


def select(rollout: Rollout, index: torch.Tensor | slice | list[int]) -> Rollout:
    """The rows ``index`` of a rollout (int indices, a bool mask over rows, or a slice), in
    that order, with their texts and the same config. Padding columns are kept, so the
    slice's (B', L) log-probs line up with the full rollout's columns."""
    rows = rollout.prompt_ids.shape[0]
    if isinstance(index, slice):
        index = torch.arange(rows)[index]
    index = torch.as_tensor(index)
    if index.dtype == torch.bool:
        if index.shape != (rows,):
            raise ValueError(f"a bool index must have shape ({rows},), got {tuple(index.shape)}")
        index = index.nonzero().squeeze(1)
    if index.dim() != 1 or (index.numel() and index.is_floating_point()):
        raise TypeError("index must be a 1-D tensor or list of row indices, a bool mask or a "
                        "slice")
    index = index.long().cpu()
    if index.numel() and (int(index.min()) < -rows or int(index.max()) >= rows):
        raise ValueError(f"index must lie in [-{rows}, {rows}), got {index.tolist()}")
    picked = {name: t[index.to(t.device)] for name, t in rollout.tensors().items()}
    texts = [rollout.texts[i] for i in index.tolist()] if rollout.texts else []
    return dataclasses.replace(rollout, **picked, texts=texts)
