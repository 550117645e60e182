"""Rewards and evaluation metrics for math reasoning (spec sections 5 and 6).

- math_reward: 1.0 when the last \\boxed{...} answer of a response is mathematically equal to
  the reference (the paper's reward), checked with the math-verify package. Without
  math-verify installed, math_equal falls back to a normalised string comparison, says so
  once with a RuntimeWarning, and math_backend() returns "string".
- pass_at_k: Chen et al. (2021)'s unbiased pass@k estimator; pass_at_k_first: the authors'
  release's variant (any correct among the first k samples).
"""

from __future__ import annotations

import functools
import re
import threading
import warnings
from types import ModuleType

import numpy as np
import torch

from softgrpo import _checks

# seconds math-verify may spend parsing / comparing one answer (main thread only, see below)
MATH_VERIFY_TIMEOUT_S = 5

_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")
# LaTeX that changes the look, not the value, for the string comparison fallback
_COSMETIC = re.compile(r"\\(?:left|right|displaystyle)(?![a-zA-Z])|\\[,;:! ]|\$|\s+")


def pass_at_k(correct: torch.Tensor | np.ndarray, k: int) -> float:
    """Unbiased pass@k of Chen et al. 2021 ("Evaluating Large Language Models Trained on Code"),
    averaged over problems.

    For a problem with n samples of which c are correct, pass@k = 1 - C(n - c, k) / C(n, k),
    the probability that k samples drawn without replacement from the n contain a correct one.
    Computed in float64 in the product form 1 - prod_{i=n-c+1}^{n} (1 - k / i), which never
    forms the (huge) binomials; it is exactly 1 when n - c < k.

    Args:
        correct: (n_problems, n_samples) bool or 0/1 values (tensor or numpy array).
        k: 1 <= k <= n_samples.
    Returns:
        The mean over problems, a python float in [0, 1].
    Raises:
        ValueError: correct not 2-D, empty or not 0/1; k out of range.
    """
    c, n = _correct_matrix(correct, k)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    # factor (1 - k/i) for i in (n - c, n]; a factor is exactly 0 at i = k when n - c < k
    factors = torch.where(i > (n - c)[:, None], 1.0 - k / i, 1.0)
    return float((1.0 - factors.prod(-1)).mean())


def pass_at_k_first(correct: torch.Tensor | np.ndarray, k: int) -> float:
    """The release's pass@k: the fraction of problems with a correct answer among their FIRST
    k samples. A biased, higher-variance estimate of the same quantity as pass_at_k (it uses
    k of the n samples); equal to it when k == n_samples.

    Args / Raises: as pass_at_k.
    """
    _correct_matrix(correct, k)
    correct = torch.as_tensor(correct)
    return float((correct[:, :k] != 0).any(-1).double().mean())


def _correct_matrix(correct: object, k: int) -> tuple[torch.Tensor, int]:
    """Validate a correctness matrix; returns (per-problem correct counts float64, n)."""
    if not isinstance(correct, (torch.Tensor, np.ndarray)):
        raise TypeError(f"correct must be a torch.Tensor or numpy array, got "
                        f"{type(correct).__name__}")
    correct = torch.as_tensor(correct)
    if correct.dim() != 2 or correct.numel() == 0:
        raise ValueError(f"correct must be a non-empty 2-D (n_problems, n_samples) matrix, got "
                         f"shape {tuple(correct.shape)}")
    if correct.dtype != torch.bool and not ((correct == 0) | (correct == 1)).all():
        raise ValueError("correct must hold only 0/1 (or bool) values")
    n = correct.shape[1]
    _checks.integer("k", k, 1, n)
    return (correct != 0).sum(-1).to(torch.float64), n


def _text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    return value


def last_boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} (or \\fbox{...}) in text, braces balanced.

    Spacing before the brace is allowed ("\\boxed {12}"); escaped braces \\{ \\} inside do not
    count. Returns None when there is no \\boxed, or the last one is never closed (a response
    cut off mid-answer).
    """
    opens = list(_BOX_OPEN.finditer(_text("text", text)))
    if not opens:
        return None
    start = opens[-1].end()
    depth, i = 1, start
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2  # an escaped character (\{, \}, \\) never opens or closes a group
            continue
        depth += (ch == "{") - (ch == "}")
        if depth == 0:
            return text[start:i]
        i += 1
    return None


@functools.cache
def _math_verify() -> ModuleType | None:
    """math_verify, imported once; None (warned once) when it is not installed."""
    try:
        import math_verify
    except ImportError:
        warnings.warn("math-verify is not installed: math_equal falls back to a normalised "
                      "string comparison (install softgrpo[hf] for the real checker)",
                      RuntimeWarning, stacklevel=3)
        return None
    return math_verify


def math_backend() -> str:
    """Which checker math_equal uses: "math-verify" or the fallback "string"."""
    return "string" if _math_verify() is None else "math-verify"


def normalize_answer(answer: str) -> str:
    """The fallback's normal form: no whitespace, $, \\left/\\right or LaTeX spacing commands,
    \\dfrac and \\tfrac read as \\frac, no trailing period."""
    answer = _COSMETIC.sub("", answer)
    return re.sub(r"\\[dt]frac", r"\\frac", answer).rstrip(".")


def _same_string(answer: str, reference: str) -> bool:
    answer, reference = normalize_answer(answer), normalize_answer(reference)
    return bool(answer) and answer == reference


def math_equal(answer: str, reference: str) -> bool:
    """Whether a bare answer (e.g. the content of a \\boxed{}) equals the reference answer.

    With math-verify: both are parsed as LaTeX (wrapped in \\boxed{} so a bare "1/2" or
    "\\frac{1}{2}" is read whole) or plain expressions, and verify(gold=reference,
    target=answer) compares them numerically and symbolically (verify is not symmetric: the
    reference goes first). math-verify's timeouts use SIGALRM, which exists only in the main
    thread; elsewhere the check runs without a timeout instead of failing. Without
    math-verify: normalize_answer(answer) == normalize_answer(reference), non-empty.
    """
    _text("answer", answer)
    _text("reference", reference)
    mv = _math_verify()
    if mv is None:
        return _same_string(answer, reference)
    timeout = (MATH_VERIFY_TIMEOUT_S
               if threading.current_thread() is threading.main_thread() else None)
    config = [mv.LatexExtractionConfig(boxed_match_priority=0), mv.ExprExtractionConfig()]
    gold, target = (mv.parse(f"\\boxed{{{s}}}", extraction_config=config,
                             parsing_timeout=timeout) for s in (reference, answer))
    return bool(mv.verify(gold, target, timeout_seconds=timeout))


def math_reward(response: str, reference: str) -> float:
    """Spec section 5's reward: 1.0 if the last \\boxed{} answer of the response is
    mathematically equal to the reference answer (math_equal), else 0.0 (also with no
    \\boxed{} at all)."""
    answer = last_boxed(response)
    _text("reference", reference)
    return float(answer is not None and math_equal(answer, reference))


def exact_match_reward(response: str, reference: str) -> float:
    """1.0 if the last \\boxed{} answer of the response equals the reference as a string after
    normalize_answer (no mathematical equivalence: "0.5" is not "\\frac{1}{2}"), else 0.0."""
    answer = last_boxed(response)
    _text("reference", reference)
    return float(answer is not None and _same_string(answer, reference))
