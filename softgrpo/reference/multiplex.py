"""Reference for one Multiplex Thinking rollout step (spec section 10; the release's sampler is
sglang/srt/layers/sampler.py of GMLR-Penn/Multiplex-Thinking, its "multiplex thinking fast
sampling path").

Per row, with z = logits / T: the filtered distribution p_hat (top_k = 0: the full softmax;
else the top_k largest z, cut by top-p measured on the full-vocabulary mass, "joint" order as
the release's flashinfer call, and renormalised over the kept set), then K independent
categorical draws from it. Draw j is the Gumbel-max argmax_v (z_v + g_j(v)) over the kept set,
g_j(v) the Philox stream j of (seed, offset, token v) (softgrpo/philox.py): replayable, and
independent of the batch and of the order of the vocabulary scan. Ties go to the smaller id.
The first draw is the step's text token. Per-slot log-prob: log p_hat(id_j); weights:
p_hat(id_j) renormalised over the K slots (repeats count once per slot), or 1/K (uniform).
"""

from __future__ import annotations

import math

import torch

from softgrpo import philox
from softgrpo.reference.sampling import nucleus, scaled, topk_sorted

# Gumbel noise from softgrpo.philox lies in [-log(-log(2**-24)), -log(2**-24)] =
# [-2.8116, 16.6355]: a token whose z is more than the spread below the row's maximum can never
# win a draw, so the unfiltered path scores only the tokens within it (bound rounded up).
GUMBEL_SPREAD = 19.5
DRAW_BLOCK = 4096  # candidates scored at once by the reference


def _argmax_smaller_id(score: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Index (along the last dimension) of the largest score, ties to the smaller id."""
    best = score.amax(-1, keepdim=True)
    tagged = torch.where(score == best, ids, torch.iinfo(torch.int64).max)
    return tagged.argmin(-1, keepdim=True)


def _draw(z: torch.Tensor, ids: torch.Tensor, k: int, seed: torch.Tensor,
          offset: torch.Tensor) -> torch.Tensor:
    """(B, k) positions along the candidates (B, n) of k Gumbel-max draws; z -inf: not kept.
    Scored DRAW_BLOCK candidates at a time (bounded memory); a later block's winner replaces
    the running one only with a larger score, or an equal score and a smaller id."""
    streams = torch.arange(k, device=z.device)[None, :, None]
    best = torch.full((z.shape[0], k), -math.inf, dtype=z.dtype, device=z.device)
    best_id = torch.full_like(best, torch.iinfo(torch.int64).max, dtype=torch.int64)
    pos = torch.zeros_like(best_id)
    for start in range(0, z.shape[1], DRAW_BLOCK):
        zb, idb = z[:, start:start + DRAW_BLOCK], ids[:, start:start + DRAW_BLOCK]
        g = philox.gumbel(seed[:, None, None], offset[:, None, None], idb[:, None, :], streams)
        score = zb[:, None, :] + g  # (B, k, block): one noise stream per draw
        at = _argmax_smaller_id(score, idb[:, None, :].expand_as(score))
        top, top_id = score.gather(-1, at).squeeze(-1), idb.gather(-1, at.squeeze(-1))
        win = (top > best) | ((top == best) & (top_id < best_id))
        best, best_id = torch.where(win, top, best), torch.where(win, top_id, best_id)
        pos = torch.where(win, at.squeeze(-1) + start, pos)
    return pos


def multiplex_sample(logits: torch.Tensor, k: int, temperature: float, top_k: int, top_p: float,
                     uniform_weights: bool, seed: torch.Tensor, offset: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """ids (B, k) draws, logprob (B, k) log p_hat(ids), weights (B, k), kept (B, top_k): the
    filter's kept ids in descending z, -1 where top-p cut ((B, 0) when top_k = 0)."""
    z = scaled(logits, temperature)
    lse = torch.logsumexp(z, -1, keepdim=True)
    if top_k:
        vals, cand = topk_sorted(logits, top_k, temperature)
        p = nucleus(torch.exp(vals - lse), top_p)  # joint: top-p on the full-vocabulary mass
        vals = vals.masked_fill(p == 0, -math.inf)
        kept = cand.masked_fill(p == 0, -1)
        norm = torch.logsumexp(vals, -1, keepdim=True)  # the filtered distribution's
    else:
        z_max = z.amax(-1, keepdim=True)
        n = int((z >= z_max - GUMBEL_SPREAD).sum(-1).max())
        vals, cand = torch.topk(z, n, dim=-1)  # every token that can win, and maybe more
        kept, norm = cand[:, :0], lse
    pick = _draw(vals, cand, k, seed, offset)
    ids = cand.gather(-1, pick)
    logprob = vals.gather(-1, pick) - norm
    if uniform_weights:
        weights = torch.full_like(logprob, 1.0 / k)
    else:
        weights = torch.softmax(logprob, -1)  # p_hat(id_j) / sum_i p_hat(id_i)
    return ids, logprob, weights, kept
