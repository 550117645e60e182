"""The soft-row likelihoods as policy-gradient estimators, on a bandit with a known gradient.

    python -m benchmarks.estimators [--draws N] [--out FILE]

(Multiplex Thinking's likelihoods on the same bandit: benchmarks/estimators_multiplex.py, the
second section of the page.)

One soft step (spec 2) with policy logits THETA (V = 8, K = 5, T = 1, noise scale 1), rolled
out by ``softgrpo.soft_sample`` and scored by ``softgrpo.soft_logprob`` (spec 9). An
estimator's draw is (R - b) * score, b = E[R] (GRPO centres its rewards); the score of draw i
is row i of the gradient of sum_i soft_logprob w.r.t. the repeated logits. Rewards: "token",
R = REWARD[token]; "soft", R = sum_j w_j REWARD[ids_j] with the soft weights w.

Each estimator is judged against the gradient of E[R] under its own rollout law: "release"
rolls out and scores with the clamp (-1.5, 3), "exact" and "token" without a clamp (no
likelihood-ratio score is unbiased under a clamp: its point masses move with the policy).
True gradients (the kept set of top-k / top-p slots is locally constant in THETA):
- token reward, no clamp: the token is an exact Gumbel-max sample, P(j) = softmax(l)_j over
  the kept slots with l = log(p_hat + 1e-6) (the sampler's eps included); autograd.
- token reward, clamp: P(j) by Gauss-Legendre quadrature over slot j's clamped Gumbel (its two
  point masses plus its density, split where the integrand jumps); autograd through the nodes
  and the break points.
- soft reward: the pathwise gradient E[dR/dTHETA] at fixed noise, over independent draws
  (torch's generator, not the sampler's Philox), with its Monte Carlo standard error (checked against finite differences with common random
  numbers through soft_sample itself).
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy
import torch
from tqdm import tqdm

import softgrpo
from softgrpo import philox

V, K, NOISE_SCALE, EPS = 8, 5, 1.0, 1e-6
CLAMP = (-1.5, 3.0)
MASK_THRESHOLD = -3.0  # soft_logprob's default for "release"
# Top-5 ids 1, 3, 0, 5, 4 with p = .52, .24, .13, .07, .04: top_p 0.8 keeps 1, 3, 0.
THETA = torch.tensor([0.6, 2.0, -1.0, 1.2, -0.5, 0.0, -2.0, -1.5], dtype=torch.float64)
REWARD = torch.tensor([0.3, 1.0, -0.4, -1.0, 0.8, 0.5, -0.7, 0.2], dtype=torch.float64)
TOP_PS = (1.0, 0.8)
TAUS = (0.1, 1.0)
REWARDS = ("token", "soft")
TRUTH_DRAWS = 4  # pathwise draws per estimator draw
TRUTH_SEED = 1000
_NODES, _WEIGHTS = (torch.from_numpy(a) for a in numpy.polynomial.legendre.leggauss(64))


@dataclass(frozen=True)
class Estimator:
    """A soft-row likelihood of soft_logprob; "release" is rolled out and scored clamped."""

    name: str
    likelihood: str
    conditional_weight: float = 0.0

    @property
    def clamp(self) -> tuple[float, float] | None:
        return CLAMP if self.likelihood == "release" else None


ESTIMATORS = (Estimator("release", "release"), Estimator("exact", "exact"),
              Estimator("token(0)", "token", 0.0), Estimator("token(0.5)", "token", 0.5))


@dataclass
class Truth:
    """Gradient of E[R] w.r.t. THETA, its standard error (0 when computed exactly), E[R]."""

    grad: torch.Tensor
    se: torch.Tensor
    mean_reward: float


def kept_log_probs(theta: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The kept slots' ids (m,) and l = log(p_hat + EPS) (m,) of spec 2, differentiable in
    theta (the kept set is taken as fixed). THETA has no ties, so the top-k order is plain."""
    vals, ids = theta.sort(descending=True)
    vals, ids = vals[:K], ids[:K]
    p = torch.softmax(vals, -1)
    keep = (p.cumsum(-1) - p).detach() <= top_p
    return ids[keep], torch.log(torch.softmax(vals[keep], -1) + EPS)


def _gumbel_cdf(x: torch.Tensor) -> torch.Tensor:
    return torch.exp(-torch.exp(-x))


def _clamped_below(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """P(clamp(G, lo, hi) < x) for G ~ Gumbel(0, 1): 0 up to lo, 1 above hi."""
    return torch.where(x <= lo, 0.0, torch.where(x > hi, 1.0, _gumbel_cdf(x)))


def _wins(a: torch.Tensor, j: int, lo: float, hi: float) -> torch.Tensor:
    """P(a_j + G_j > a_i + G_i for all i != j), G_i iid clamped Gumbel(0, 1)."""
    d = a[j] - torch.cat([a[:j], a[j + 1:]])

    def beats(g: torch.Tensor) -> torch.Tensor:  # P(slot j beats every other | G_j = g)
        return _clamped_below(d + g[..., None], lo, hi).prod(-1)

    lo_t, hi_t = a.new_tensor(lo), a.new_tensor(hi)
    # beats jumps where some d_i + g crosses lo or hi: integrate piece by piece.
    cuts = torch.cat([lo_t[None], hi_t[None], (lo - d).clamp(lo, hi), (hi - d).clamp(lo, hi)])
    cuts = cuts.sort().values
    left, width = cuts[:-1, None], (cuts[1:] - cuts[:-1])[:, None]
    g = left + width * (_NODES + 1) / 2
    density = torch.exp(-g - torch.exp(-g))
    integral = (width / 2 * _WEIGHTS * density * beats(g)).sum()
    return _gumbel_cdf(lo_t) * beats(lo_t) + (1 - _gumbel_cdf(hi_t)) * beats(hi_t) + integral


def token_probs(l: torch.Tensor, clamp: tuple[float, float] | None) -> torch.Tensor:
    """P(token = kept slot j) for token = argmax_j (l_j + c g_j), g Gumbel, clamped or not."""
    a = l / NOISE_SCALE
    if clamp is None:
        return torch.softmax(a, -1)  # Gumbel-max
    return torch.stack([_wins(a, j, *clamp) for j in range(len(a))])


def expected_token_reward(theta: torch.Tensor, top_p: float,
                          clamp: tuple[float, float] | None) -> torch.Tensor:
    """E[REWARD[token]] (a scalar, differentiable in theta)."""
    ids, l = kept_log_probs(theta, top_p)
    return token_probs(l, clamp) @ REWARD[ids]


def sampler_noise(draws: int, offset: int) -> torch.Tensor:
    """(draws, K) the unclamped Gumbel noise soft_sample draws for THETA's top-k ids (in top-k
    order) with seeds 0..draws-1 at Philox ``offset``."""
    ids = THETA.argsort(descending=True)[:K]
    return philox.gumbel(torch.arange(draws)[:, None], torch.tensor(offset), ids).double()


def truth_noise(draws: int, seed: int = TRUTH_SEED) -> torch.Tensor:
    """(draws, K) float64 Gumbel(0, 1) noise from torch's generator, independent of the
    rollouts (and of softgrpo.philox)."""
    u = torch.rand(draws, K, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return -torch.log(-torch.log(u))


def pathwise(top_p: float, tau: float, clamp: tuple[float, float] | None,
             g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft reward R (n,) and dR/dTHETA (n, V) at unclamped top-k noise g (n, >= m), the
    kept slots (a prefix of the top-k) reading their columns, clamped if ``clamp``."""
    ids, l = kept_log_probs(THETA, top_p)
    g = g[:, :len(ids)] if clamp is None else g[:, :len(ids)].clamp(*clamp)
    jac = torch.autograd.functional.jacobian(lambda t: kept_log_probs(t, top_p)[1], THETA)
    w = torch.softmax((l + NOISE_SCALE * g) / tau, -1)
    r = w @ REWARD[ids]
    return r, (w * (REWARD[ids] - r[:, None]) / tau) @ jac


def true_value(reward: str, top_p: float, tau: float, clamp: tuple[float, float] | None,
               g: torch.Tensor) -> Truth:
    """The gradient of E[R] under the rollout law with this clamp (see the module docstring);
    the soft reward's from pathwise draws at the unclamped top-k noise g (n, K)."""
    if reward == "token":
        theta = THETA.clone().requires_grad_()
        value = expected_token_reward(theta, top_p, clamp)
        value.backward()
        return Truth(theta.grad, torch.zeros(V, dtype=torch.float64), value.item())
    r, grads = pathwise(top_p, tau, clamp, g)
    return Truth(grads.mean(0), grads.std(0) / math.sqrt(len(g)), r.mean().item())


def rollout(top_p: float, tau: float, clamp: tuple[float, float] | None, draws: int,
            offset: int) -> softgrpo.SoftSample:
    """Soft steps of the bandit policy, seeds 0..draws-1 at Philox ``offset``."""
    return softgrpo.soft_sample(THETA.float().expand(draws, V), K, top_p=top_p, tau=tau,
                                noise_scale=NOISE_SCALE, seed=torch.arange(draws),
                                offset=offset, noise_clamp=clamp)


def rewards(sample: softgrpo.SoftSample, reward: str) -> torch.Tensor:
    """R (n,) of each draw: REWARD[token] or the soft-weighted REWARD of the slots."""
    if reward == "token":
        return REWARD[sample.token]
    return (sample.weights.double() * REWARD[sample.ids]).sum(-1)


def scores(sample: softgrpo.SoftSample, estimator: Estimator) -> torch.Tensor:
    """(n, V) gradient of each draw's soft_logprob w.r.t. its logits (at THETA)."""
    logits = THETA.float().repeat(len(sample.token), 1).requires_grad_()
    lp = softgrpo.soft_logprob(logits, sample.ids, sample.perturbed, clamp=estimator.clamp,
                               likelihood=estimator.likelihood,
                               conditional_weight=estimator.conditional_weight,
                               noise_scale=NOISE_SCALE)
    lp.sum().backward()
    return logits.grad.double()


def compare(reward: torch.Tensor, score: torch.Tensor, truth: Truth,
            pathwise: torch.Tensor | None = None) -> dict[str, float]:
    """Metrics of the per-draw estimates (R - E[R]) * score (+ pathwise, a per-draw gradient
    of R at fixed draws), from the draws' rewards R (n,) and scores (n, V), against the true
    gradient.

    ratio = <mean, true> / |true|^2 (with its standard error), cosine, noise/signal draws =
    E|g_i - mean|^2 / |mean|^2 (spec 9: the draws that make the mean's noise equal its
    signal), max |z| over the components with a non-zero standard error (the estimate's and the
    truth's combined), and the ratio without the baseline (b = 0)."""
    n, t = len(reward), truth.grad
    direct = 0.0 if pathwise is None else pathwise
    per_draw = (reward - truth.mean_reward)[:, None] * score + direct
    mean = per_draw.mean(0)
    se = (per_draw.var(0) / n + truth.se**2).sqrt()
    active = se > 1e-12
    ratios = per_draw @ t / (t @ t)
    return dict(
        ratio=float(ratios.mean()), ratio_se=float(ratios.std() / math.sqrt(n)),
        cosine=float(mean @ t / (mean.norm() * t.norm())),
        noise_draws=float((per_draw - mean).pow(2).sum(-1).mean() / (mean @ mean)),
        max_z=float(((mean - t)[active] / se[active]).abs().max()),
        ratio_no_baseline=float((reward[:, None] * score + direct).mean(0) @ t / (t @ t)))


def frequency_z(sample: softgrpo.SoftSample, top_p: float,
                clamp: tuple[float, float] | None) -> float:
    """Max |z| of the token frequencies of a rollout against token_probs (binomial errors)."""
    ids, l = kept_log_probs(THETA, top_p)
    p = token_probs(l, clamp).detach()
    n = len(sample.token)
    freq = (sample.token[:, None] == ids).double().mean(0)
    return float(((freq - p) / (p * (1 - p) / n).sqrt()).abs().max())


def run(draws: int, progress: bool = False) -> tuple[list[dict], list[dict]]:
    """Every (reward, top_p, tau, estimator) row, and a validation row per rollout law.

    Rollouts use seeds 0..draws-1 at an offset per (top_p, tau, clamp); the soft reward's
    pathwise truths share TRUTH_DRAWS * draws draws of truth_noise (independent noise)."""
    g_truth = truth_noise(TRUTH_DRAWS * draws)
    settings = [(top_p, tau, clamp) for top_p in TOP_PS for tau in TAUS for clamp in (CLAMP, None)]
    rows, checks = [], []
    for offset, (top_p, tau, clamp) in enumerate(tqdm(settings, desc="estimators", file=sys.stderr,
                                                      disable=not progress)):
        sample = rollout(top_p, tau, clamp, draws, offset)
        checks.append(dict(top_p=top_p, tau=tau, clamp=clamp,
                           freq_z=frequency_z(sample, top_p, clamp)))
        score = {e.name: scores(sample, e) for e in ESTIMATORS if e.clamp == clamp}
        for reward in REWARDS:
            truth = true_value(reward, top_p, tau, clamp, g_truth)
            r = rewards(sample, reward)
            for name, s in score.items():
                rows.append(dict(reward=reward, top_p=top_p, tau=tau, estimator=name,
                                 **compare(r, s, truth)))
    order = {e.name: i for i, e in enumerate(ESTIMATORS)}
    rows.sort(key=lambda r: (REWARDS.index(r["reward"]), -r["top_p"], r["tau"],
                             order[r["estimator"]]))
    return rows, checks


def quadrature_fd_error(top_p: float, h: float = 1e-5) -> float:
    """Max |autograd - central finite difference| of the clamped expected token reward."""
    theta = THETA.clone().requires_grad_()
    expected_token_reward(theta, top_p, CLAMP).backward()
    fd = torch.stack([(expected_token_reward(THETA + h * e, top_p, CLAMP)
                       - expected_token_reward(THETA - h * e, top_p, CLAMP)) / (2 * h)
                      for e in torch.eye(V, dtype=torch.float64)])
    return float((theta.grad - fd).abs().max())


def pathwise_fd_error(top_p: float, tau: float, clamp: tuple[float, float] | None, draws: int,
                      h: float = 1e-3) -> tuple[float, float]:
    """(max |pathwise - finite difference|, |pathwise|) of the mean soft-reward gradient over
    the same draws, the finite differences through soft_sample at THETA +- h e_k with common
    random numbers (its noise is keyed by token id, so a shifted policy sees the same noise)."""
    _, grads = pathwise(top_p, tau, clamp, sampler_noise(draws, 0))
    shifts = torch.cat([torch.eye(V), -torch.eye(V)]).double() * h
    theta = (THETA + shifts).float().repeat_interleave(draws, 0)
    sample = softgrpo.soft_sample(theta, K, top_p=top_p, tau=tau, noise_scale=NOISE_SCALE,
                                  seed=torch.arange(draws).repeat(2 * V), noise_clamp=clamp)
    mean = rewards(sample, "soft").view(2, V, draws).mean(-1)
    fd = (mean[0] - mean[1]) / (2 * h)
    return float((grads.mean(0) - fd).abs().max()), float(grads.mean(0).norm())


def _fmt(row: dict) -> str:
    return (f"| {row['reward']} | {row['top_p']:g} | {row['tau']:g} | {row['estimator']} "
            f"| {row['ratio']:.3f} ± {row['ratio_se']:.3f} | {row['cosine']:.3f} "
            f"| {row['noise_draws']:.1f} | {row['max_z']:.1f} | {row['ratio_no_baseline']:.3f} |")


def averaged_slots(top_p: float) -> int:
    """How many slots the release's mean averages: kept, with l > its mask threshold."""
    return int((kept_log_probs(THETA, top_p)[1] > MASK_THRESHOLD).sum())


def summary(rows: list[dict]) -> str:
    """What the table shows, with its numbers."""
    def pick(estimator: str, reward: str | None = None) -> list[dict]:
        return [r for r in rows if r["estimator"] == estimator
                and (reward is None or r["reward"] == reward)]

    def span(values: list[float], f: str = ".3f") -> str:
        return f"{min(values):{f}} to {max(values):{f}}"

    rel, ex = pick("release"), pick("exact")
    t0_tok, t0_soft = pick("token(0)", "token"), pick("token(0)", "soft")
    slots = {p: averaged_slots(p) for p in TOP_PS}
    return (
        f"\"exact\" agrees with the true gradient in all {len(ex)} cases (ratio "
        f"{span([r['ratio'] for r in ex])}, max |z| {max(r['max_z'] for r in ex):.1f}), at "
        f"{span([r['noise_draws'] for r in ex], '.1f')} draws for noise = signal. \"token(0)\" "
        f"is unbiased for the token reward (ratio {span([r['ratio'] for r in t0_tok])}, max |z| "
        f"{max(r['max_z'] for r in t0_tok):.1f}) at "
        f"{span([r['noise_draws'] for r in t0_tok], '.1f')} draws for noise = signal, but misses "
        f"the soft reward's dependence on the weights (ratio "
        f"{span([r['ratio'] for r in t0_soft])}, the larger bias at tau 1); \"token(0.5)\" sits "
        f"between (ratio {span([r['ratio'] for r in pick('token(0.5)', 'soft')])}). "
        f"\"release\" is shrunk, not turned: ratio {span([r['ratio'] for r in rel])}, cosine >= "
        f"{min(r['cosine'] for r in rel):.3f}, {span([r['noise_draws'] for r in rel], '.1f')} "
        "draws for noise = signal; ratio x the number of slots its mean averages ("
        + ", ".join(f"{n} at top_p {p:g}" for p, n in slots.items()) + ") is "
        f"{span([r['ratio'] * slots[r['top_p']] for r in rel], '.2f')}.")


def report(rows: list[dict], checks: list[dict], draws: int, command: str) -> str:
    """The markdown page: set-up, table, summary, validation of the true gradients."""
    from benchmarks.run import machine, versions

    setup = (
        f"Bandit: one soft step, THETA = {THETA.tolist()}, V = {V}, K = {K}, T = 1, noise scale "
        f"{NOISE_SCALE:g}; top_p 0.8 keeps 3 of the 5 top-k slots, top_p 1 all 5. Rewards: "
        f"token, R = r[token]; soft, R = sum_j w_j r[ids_j]; r = {REWARD.tolist()}. {draws} "
        "draws per (top_p, tau, rollout law); \"release\" rolls out and scores with the clamp "
        f"{CLAMP}, the others without (the truth is the gradient under each one's law). A "
        "draw's estimate is (R - E[R]) * score (the baseline E[R] is the truth's; \"b = 0\" is "
        "the ratio without it). Ratio = <mean, true> / |true|^2 ± its standard error; "
        "noise/signal draws = E|g_i - mean|^2 / |mean|^2 (spec 9's definition); max |z| over "
        "the gradient's components, from the measured standard errors (and the pathwise "
        "truth's).")
    header = ("| reward | top_p | tau | estimator | ratio | cosine | draws for noise = signal "
              "| max abs z | ratio, b = 0 |")
    frequencies = ", ".join(
        f"top_p {c['top_p']:g} tau {c['tau']:g} {'clamp' if c['clamp'] else 'none'}: "
        f"{c['freq_z']:.1f}" for c in checks)
    fd_error, fd_norm = pathwise_fd_error(0.8, 0.1, CLAMP, 20_000)
    validation = [
        ("- token reward, no clamp: P(token = j) = softmax(l)_j over the kept slots, "
         "l = log(p_hat + 1e-6) (eps included, as the sampler draws), differentiated by autograd."),
        ("- token reward, clamp: P(token = j) by 64-point Gauss-Legendre quadrature over the "
         "clamped Gumbel of slot j (point masses at the bounds plus the density, split at the "
         "break points where another slot's clamped CDF jumps), autograd through nodes and break "
         "points; max |autograd - finite difference| = "
         f"{max(quadrature_fd_error(p) for p in TOP_PS):.1e}."),
        (f"- soft reward: pathwise E[dR/dTHETA] at fixed noise over {TRUTH_DRAWS * draws} "
         "independent draws from torch's generator (its standard error enters |z|). Against "
         "central finite differences (h = 1e-3) of soft_sample's own soft reward with common "
         "random numbers, 20000 draws, top_p 0.8, tau 0.1, clamped: max |difference| = "
         f"{fd_error:.1e} (|gradient| = {fd_norm:.2f})."),
        ("- token frequencies of every rollout against P(token = j) (max |z|, binomial errors): "
         f"{frequencies}."),
    ]
    return "\n".join([
        "# Soft-row likelihoods as gradient estimators (spec 9)", "",
        f"`{command}` on {machine('cpu')}; {versions('cpu')}.", "",
        setup, "",
        header, "|---|---:|---:|---|---:|---:|---:|---:|---:|", *(_fmt(r) for r in rows), "",
        summary(rows), "",
        "## True gradients and their validation", "",
        *validation, ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=400_000,
                        help="rollouts per (top_p, tau, rollout law)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/estimators.md"))
    args = parser.parse_args(argv)
    from benchmarks import estimators_multiplex as multiplex

    rows, checks = run(args.draws, progress=True)
    mx_rows, mx_checks = multiplex.run(args.draws, progress=True)
    command = "python -m benchmarks.estimators" + ("" if args.draws == 400_000
                                                   else f" --draws {args.draws}")
    text = "\n".join([report(rows, checks, args.draws, command),
                      *multiplex.report(mx_rows, mx_checks, args.draws)])
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
