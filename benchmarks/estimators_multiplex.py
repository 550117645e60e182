"""Multiplex Thinking's likelihoods as policy-gradient estimators (spec 10), on the bandit of
benchmarks/estimators.py; part of ``python -m benchmarks.estimators``.

One multiplex step with policy logits THETA: K = 3 draws from the filtered distribution
(``softgrpo.multiplex_sample``), scored by ``softgrpo.multiplex_logprob`` summed over the
draws. Estimators: "filtered" (each draw's log-prob over the kept set: the exact score),
"full" (over the vocabulary: the release's), and "first" (the first draw's filtered log-prob
alone). Rewards: "token", R = r[first draw] (the text token); "uniform", R = mean_j r[ids_j]
(the input mix with the release's enable_unweighting); "weighted", R = sum_j w_j r[ids_j] with
w_j = p(ids_j) / sum_i p(ids_i) (the release's default mix, which depends on THETA at fixed
draws). Filters: none (the release's runs), top-k 5, top-k 5 with top-p 0.8 (top-p on the
full-vocabulary mass, the release's "joint" order).

True gradients are exact: the draws are i.i.d. from p_f = softmax(THETA[kept]) (the kept set
is locally constant), so E[R] is a finite sum over the |kept|^K ordered draws, differentiated
by autograd. A two-step episode (the second step's logits a row of THETA2 chosen by the first
step's token, R = R2[token 1, token 2]) shows what a one-step bandit hides: the full
log-prob's extra term -K grad log Z_kept(state) depends only on the state, so a baseline
cancels it in one step but not when the state depends on earlier draws.
"""

from __future__ import annotations

import itertools
import sys

import torch
from tqdm import tqdm

import softgrpo
from benchmarks.estimators import REWARD, THETA, Truth, V, compare

K = 3
FILTERS = ((None, 1.0), (5, 1.0), (5, 0.8))  # (top_k, top_p)
REWARDS = ("token", "uniform", "weighted")
ESTIMATORS = ("filtered", "full", "first")
THETA2 = torch.randn(V, V, generator=torch.Generator().manual_seed(7), dtype=torch.float64) * 1.5
REWARD2 = torch.randn(V, V, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
OFFSET = 100  # Philox offsets of these rollouts: apart from the soft bandit's


def filter_name(top_k: int | None, top_p: float) -> str:
    return "none" if top_k is None else f"top-k {top_k}" + (f", top-p {top_p:g}"
                                                          if top_p < 1 else "")


def kept_set(theta: torch.Tensor, top_k: int | None, top_p: float) -> torch.Tensor:
    """Ids the filter keeps (descending probability): the top_k largest, cut by top-p on the
    full-vocabulary mass (the mass before a token <= top_p). THETA has no ties."""
    p = torch.softmax(theta.detach(), -1)
    order = p.argsort(descending=True)[:top_k]
    before = p[order].cumsum(-1) - p[order]
    return order[before <= top_p]


def expected_reward(theta: torch.Tensor, top_k: int | None, top_p: float,
                    reward: str) -> torch.Tensor:
    """E[R] of one step (differentiable in theta), summed over every ordered K-tuple of draws
    from the kept set."""
    kept = kept_set(theta, top_k, top_p)
    log_p = torch.log_softmax(theta[kept], -1)
    tuples = torch.tensor(list(itertools.product(range(len(kept)), repeat=K)))
    q = log_p[tuples].sum(-1).exp()  # i.i.d. draws
    r = REWARD[kept[tuples]]
    if reward == "token":
        value = r[:, 0]
    elif reward == "uniform":
        value = r.mean(-1)
    else:
        w = torch.softmax(log_p[tuples], -1)  # p(ids_j) / sum_i p(ids_i), THETA-dependent
        value = (w * r).sum(-1)
    return q @ value


def truth(top_k: int | None, top_p: float, reward: str) -> Truth:
    theta = THETA.clone().requires_grad_()
    value = expected_reward(theta, top_k, top_p, reward)
    value.backward()
    return Truth(theta.grad, torch.zeros(V, dtype=torch.float64), value.item())


def rollout(logits: torch.Tensor, top_k: int | None, top_p: float, offset: int
            ) -> softgrpo.MultiplexSample:
    """Multiplex steps of the rows of logits (n, V), seeds 0..n-1 at Philox ``offset``."""
    return softgrpo.multiplex_sample(logits.float(), K, top_k=top_k, top_p=top_p,
                                     seed=torch.arange(len(logits)), offset=offset)


def rewards(sample: softgrpo.MultiplexSample, reward: str) -> torch.Tensor:
    r = REWARD[sample.ids]
    if reward == "token":
        return r[:, 0]
    if reward == "uniform":
        return r.mean(-1)
    return (sample.weights.double() * r).sum(-1)


def scores(logits: torch.Tensor, sample: softgrpo.MultiplexSample,
           estimator: str) -> torch.Tensor:
    """(n, V) gradient of each row's summed multiplex_logprob w.r.t. its logits."""
    logits = logits.float().clone().requires_grad_()
    lp = softgrpo.multiplex_logprob(logits, sample.ids, sample.logprobs,
                                    kept=None if estimator == "full" else sample.kept)
    (lp[:, 0] if estimator == "first" else lp).sum().backward()
    return logits.grad.double()


def weight_pathwise(sample: softgrpo.MultiplexSample) -> torch.Tensor:
    """(n, V) gradient of the weighted reward at fixed draws: through w = softmax(THETA[ids])
    (the filtered normaliser cancels in the renormalisation)."""
    theta = THETA.expand(len(sample.ids), V).clone().requires_grad_()
    w = torch.softmax(theta.gather(-1, sample.ids), -1)
    (w * REWARD[sample.ids]).sum().backward()
    return theta.grad


def frequency_z(sample: softgrpo.MultiplexSample, top_k: int | None, top_p: float) -> float:
    """Max |z| of every draw's token frequencies against p_f (binomial errors)."""
    kept = kept_set(THETA, top_k, top_p)
    p = torch.softmax(THETA[kept], -1)
    n = len(sample.ids)
    freq = (sample.ids[:, :, None] == kept).double().mean(0)  # (K, |kept|)
    return float(((freq - p) / (p * (1 - p) / n).sqrt()).abs().max())


def two_step_truth(top_k: int | None, top_p: float) -> Truth:
    """Gradient of E[R2[token 1, token 2]] w.r.t. (THETA, THETA2) flattened (V + V * V,)."""
    theta1, theta2 = THETA.clone().requires_grad_(), THETA2.clone().requires_grad_()
    kept1 = kept_set(theta1, top_k, top_p)
    p1 = torch.softmax(theta1[kept1], -1)
    value = 0.0
    for a, pa in zip(kept1.tolist(), p1):
        kept2 = kept_set(theta2[a], top_k, top_p)
        value = value + pa * (torch.softmax(theta2[a, kept2], -1) @ REWARD2[a, kept2])
    value.backward()
    grad = torch.cat([theta1.grad, theta2.grad.flatten()])
    return Truth(grad, torch.zeros_like(grad), float(value.detach()))


def two_step(draws: int, top_k: int | None, top_p: float) -> list[dict]:
    """The two-step episode's rows, one per estimator (token rewards)."""
    s1 = rollout(THETA.expand(draws, V), top_k, top_p, OFFSET + 50)
    logits2 = THETA2[s1.token]
    s2 = rollout(logits2, top_k, top_p, OFFSET + 51)
    r = REWARD2[s1.token, s2.token]
    t = two_step_truth(top_k, top_p)
    rows = []
    for estimator in ("filtered", "full"):
        g2 = torch.zeros(draws, V, V, dtype=torch.float64)
        g2[torch.arange(draws), s1.token] = scores(logits2, s2, estimator)
        score = torch.cat([scores(THETA.expand(draws, V), s1, estimator), g2.flatten(1)], -1)
        rows.append(dict(reward="two-step token", filter=filter_name(top_k, top_p),
                         estimator=estimator, **compare(r, score, t)))
    return rows


def run(draws: int, progress: bool = False) -> tuple[list[dict], list[dict]]:
    """Every (reward, filter, estimator) row and the two-step rows; a frequency check per
    filter."""
    rows, checks = [], []
    for i, (top_k, top_p) in enumerate(tqdm(FILTERS, desc="multiplex estimators",
                                            file=sys.stderr, disable=not progress)):
        logits = THETA.expand(draws, V)
        sample = rollout(logits, top_k, top_p, OFFSET + i)
        checks.append(dict(filter=filter_name(top_k, top_p),
                           freq_z=frequency_z(sample, top_k, top_p)))
        score = {e: scores(logits, sample, e) for e in ESTIMATORS}
        for reward in REWARDS:
            t = truth(top_k, top_p, reward)
            r = rewards(sample, reward)
            for e in ESTIMATORS:
                rows.append(dict(reward=reward, filter=filter_name(top_k, top_p), estimator=e,
                                 **compare(r, score[e], t)))
            if reward == "weighted":
                rows.append(dict(reward=reward, filter=filter_name(top_k, top_p),
                                 estimator="filtered + pathwise",
                                 **compare(r, score["filtered"], t, weight_pathwise(sample))))
    rows.sort(key=lambda r: REWARDS.index(r["reward"]))
    rows += two_step(draws, 5, 0.8)
    return rows, checks


def _fmt(row: dict) -> str:
    return (f"| {row['reward']} | {row['filter']} | {row['estimator']} "
            f"| {row['ratio']:.3f} ± {row['ratio_se']:.3f} | {row['cosine']:.3f} "
            f"| {row['noise_draws']:.1f} | {row['max_z']:.1f} | {row['ratio_no_baseline']:.3f} |")


def summary(rows: list[dict]) -> str:
    def pick(estimator: str, reward: str, filters: tuple[str, ...] | None = None) -> list[dict]:
        return [r for r in rows if r["estimator"] == estimator and r["reward"] == reward
                and (filters is None or r["filter"] in filters)]

    def span(values: list[float], f: str = ".3f") -> str:
        return f"{min(values):{f}} to {max(values):{f}}"

    exact = [r for reward in ("token", "uniform") for r in pick("filtered", reward)]
    cut = ("top-k 5", "top-k 5, top-p 0.8")
    full_cut = [r for reward in ("token", "uniform") for r in pick("full", reward, cut)]
    filt_cut = [r for reward in ("token", "uniform") for r in pick("filtered", reward, cut)]
    full_none = [r for reward in ("token", "uniform") for r in pick("full", reward, ("none",))]
    weighted = pick("filtered", "weighted")
    repaired = pick("filtered + pathwise", "weighted")
    first = pick("first", "token")
    two = {r["estimator"]: r for r in rows if r["reward"] == "two-step token"}
    return (
        f"The filtered score is exact for rewards of the draws: token and uniform-mix rewards, "
        f"every filter, ratio {span([r['ratio'] for r in exact])}, max |z| "
        f"{max(r['max_z'] for r in exact):.1f}, {span([r['noise_draws'] for r in exact], '.1f')}"
        f" draws for noise = signal. Without a filter the release's full-vocabulary log-prob is "
        f"the same function (noise draws {span([r['noise_draws'] for r in full_none], '.1f')}). "
        f"Where the filter cuts, the full log-prob adds -K grad log Z_kept, a draw-independent "
        f"vector: with the exact baseline it cancels in this one-state bandit (ratio "
        f"{span([r['ratio'] for r in full_cut])}; draws for noise = signal "
        f"{span([r['noise_draws'] for r in full_cut], '.1f')}, filtered "
        f"{span([r['noise_draws'] for r in filt_cut], '.1f')}), but without a baseline it is "
        f"biased (b = 0: ratio "
        f"{span([r['ratio_no_baseline'] for r in full_cut])}, filtered "
        f"{span([r['ratio_no_baseline'] for r in pick('filtered', 'token', cut)])}). In the "
        f"two-step episode the term depends on the visited state and no baseline removes it: "
        f"full ratio {two['full']['ratio']:.3f} ± {two['full']['ratio_se']:.3f} (max |z| "
        f"{two['full']['max_z']:.1f}), filtered {two['filtered']['ratio']:.3f} ± "
        f"{two['filtered']['ratio_se']:.3f} (max |z| {two['filtered']['max_z']:.1f}). The "
        f"weighted mix depends on THETA at fixed draws: a score (with detached inputs, as the "
        f"release trains) misses that pathwise part (filtered ratio "
        f"{span([r['ratio'] for r in weighted])}, max |z| "
        f"{min(r['max_z'] for r in weighted):.1f} or more); adding the gradient of R through "
        f"the weights at fixed draws restores it (ratio {span([r['ratio'] for r in repaired])}, "
        f"max |z| {max(r['max_z'] for r in repaired):.1f}). The first draw's log-prob alone is "
        f"the Rao-Blackwellised score of the token reward (ratio "
        f"{span([r['ratio'] for r in first])}, {span([r['noise_draws'] for r in first], '.1f')} "
        "draws for noise = signal) but blind to the other draws.")


def report(rows: list[dict], checks: list[dict], draws: int) -> list[str]:
    """The page's multiplex section (markdown lines)."""
    setup = (
        f"One multiplex step of the same policy THETA, K = {K} draws, T = 1; filters "
        + ", ".join(filter_name(*f) for f in FILTERS) + " (the kept sets: "
        + ", ".join(f"{filter_name(*f)}: {kept_set(THETA, *f).tolist()}" for f in FILTERS)
        + f"). {draws} draws per filter. Rewards: token, R = r[first draw]; uniform, R = "
        "mean_j r[ids_j]; weighted, R = sum_j w_j r[ids_j], w_j = p(ids_j) / sum_i p(ids_i). "
        "Estimators (the score summed over the K draws): filtered (log-prob over the kept "
        "set), full (over the vocabulary, the release's), first (the first draw's filtered "
        "log-prob only), and for the weighted reward filtered + pathwise (plus the gradient "
        "of R through the weights at fixed draws). Two-step token: a second multiplex step with logits THETA2[token 1] "
        "(a fixed random 8 x 8 table), R = R2[token 1, token 2], top-k 5, top-p 0.8; the "
        "gradient is w.r.t. THETA and THETA2 (72 components). True gradients by exact "
        "enumeration of the draws.")
    frequencies = ", ".join(f"{c['filter']}: {c['freq_z']:.1f}" for c in checks)
    header = ("| reward | filter | estimator | ratio | cosine | draws for noise = signal "
              "| max abs z | ratio, b = 0 |")
    check = ("Every draw's token frequencies against p_f (max |z| over draws and tokens, "
             f"binomial errors): {frequencies}.")
    return ["## Multiplex Thinking (spec 10)", "", setup, "", header,
            "|---|---|---|---:|---:|---:|---:|---:|", *(_fmt(r) for r in rows), "",
            summary(rows), "", check, ""]
