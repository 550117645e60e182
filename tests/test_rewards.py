"""Evaluation helpers (softgrpo.rewards): pass@k, \\boxed{} extraction, the math checker."""

import math
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction

import numpy as np
import pytest
import torch

from softgrpo import rewards
from softgrpo.rewards import (
    exact_match_reward,
    last_boxed,
    math_backend,
    math_equal,
    math_reward,
    pass_at_k,
    pass_at_k_first,
)


def row(n, c):
    """One problem with n samples, the first c correct."""
    return [[1] * c + [0] * (n - c)]


# --------------------------------------------------------------------------- pass@k

@pytest.mark.parametrize("c, k, expected", [
    (2, 1, 1 - 3 / 5),    # 1 - C(3,1)/C(5,1)
    (2, 2, 1 - 3 / 10),   # 1 - C(3,2)/C(5,2)
    (2, 3, 1 - 1 / 10),   # 1 - C(3,3)/C(5,3)
    (2, 4, 1.0),          # n - c = 3 < k: every draw of 4 holds a correct one
    (0, 1, 0.0), (0, 5, 0.0),
    (5, 1, 1.0), (5, 5, 1.0),
])
def test_pass_at_k_hand_values(c, k, expected):
    assert pass_at_k(torch.tensor(row(5, c)), k) == pytest.approx(expected, abs=1e-15)


def test_pass_at_k_matches_binomials_and_averages_problems():
    for n in range(1, 9):
        for k in range(1, n + 1):
            matrix = torch.tensor([r[0] for r in (row(n, c) for c in range(n + 1))])
            expected = [1 - math.comb(n - c, k) / math.comb(n, k) for c in range(n + 1)]
            assert pass_at_k(matrix, k) == pytest.approx(sum(expected) / len(expected),
                                                         abs=1e-14)


def test_pass_at_k_large_n_is_stable():
    # C(256, 128) ~ 1e76: the product form never builds it
    n, c, k = 256, 3, 128
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k(np.array(row(n, c)), k) == pytest.approx(float(exact), abs=1e-13)


def test_pass_at_k_accepts_bool_numpy_and_float():
    m = [[1, 0, 0, 1, 0], [0, 0, 0, 0, 1]]
    expected = ((1 - 3 / 10) + (1 - 6 / 10)) / 2
    for x in (torch.tensor(m, dtype=torch.bool), np.array(m), torch.tensor(m, dtype=torch.float32)):
        assert pass_at_k(x, 2) == pytest.approx(expected, abs=1e-15)


def test_pass_at_k_first():
    m = torch.tensor([[0, 0, 1, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]])
    assert pass_at_k_first(m, 1) == pytest.approx(1 / 3)
    assert pass_at_k_first(m, 2) == pytest.approx(1 / 3)
    assert pass_at_k_first(m, 3) == pytest.approx(2 / 3)
    assert pass_at_k_first(m, 5) == pytest.approx(pass_at_k(m, 5))  # k = n: the same
    assert pass_at_k_first(m, 1) != pytest.approx(pass_at_k(m, 1))  # 1/3 vs (0.2 + 0.2) / 3


@pytest.mark.parametrize("fn", [pass_at_k, pass_at_k_first])
@pytest.mark.parametrize("correct, k, error, match", [
    (torch.ones(2, 5), 6, ValueError, "k"),
    (torch.ones(2, 5), 0, ValueError, "k"),
    (torch.ones(5), 1, ValueError, "correct"),
    (torch.ones(0, 5), 1, ValueError, "correct"),
    (torch.full((2, 5), 2.0), 1, ValueError, "correct"),
    ([[1, 0]], 1, TypeError, "correct"),
])
def test_pass_at_k_bad_input(fn, correct, k, error, match):
    with pytest.raises(error, match=match):
        fn(correct, k)


# --------------------------------------------------------------------------- last_boxed

@pytest.mark.parametrize("text, expected", [
    (r"so the answer is $\boxed{12}$.", "12"),
    (r"\boxed{\frac{a}{b}}", r"\frac{a}{b}"),
    (r"first \boxed{3}, then corrected: \boxed{-4}", "-4"),
    (r"\boxed {\frac {3} {4}}", r"\frac {3} {4}"),
    (r"\fbox{7}", "7"),
    (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),
    (r"\boxed{}", ""),
    (r"\boxed{\frac{1}{2}", None),  # cut off before the brace closes
    ("The answer is 12.", None),
    ("", None),
])
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


def test_last_boxed_bad_input():
    with pytest.raises(TypeError, match="text"):
        last_boxed(None)


# --------------------------------------------------------------------------- math checker

EQUAL = [
    ("12", "12"), ("-3", "-3"), (r"\frac{1}{2}", "0.5"), ("1/2", r"\frac{1}{2}"),
    (r"\dfrac{1}{2}", "0.5"), (r"\frac {3} {4}", "0.75"), (r"\frac34", "0.75"),
    (r"\frac{a}{b}", r"\frac{a}{b}"), (r"2\sqrt{2}", r"\sqrt{8}"), ("1,000", "1000"),
]
DIFFERENT = [
    ("3", "-3"), ("13", "12"), (r"\frac{a}{b}", r"\frac{b}{a}"), ("0.51", r"\frac{1}{2}"),
    ("", "1"),
]


def test_backend_is_math_verify():
    assert math_backend() == "math-verify"


@pytest.mark.parametrize("answer, reference", EQUAL)
def test_math_equal_true(answer, reference):
    assert math_equal(answer, reference)


@pytest.mark.parametrize("answer, reference", DIFFERENT)
def test_math_equal_false(answer, reference):
    assert not math_equal(answer, reference)


def test_math_equal_off_the_main_thread():
    # math-verify's SIGALRM timeout would raise outside the main thread
    pairs = EQUAL[:4] + DIFFERENT[:2]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda p: math_equal(*p), pairs))
    assert results == [True] * 4 + [False] * 2


@pytest.mark.parametrize("response, reference, expected", [
    (r"<think>...</think> The answer is $\boxed{\dfrac{1}{2}}$.", "0.5", 1.0),
    (r"Thus $x = \boxed{12}$.", "12", 1.0),
    (r"12 9 18 </think> \boxed{ 18 }", "18", 1.0),  # softgrpo.tasks' synthetic format
    (r"We get $\boxed{\frac{a}{b}}$", r"\frac{a}{b}", 1.0),
    (r"\boxed{12} ... wait, recheck: \boxed{13}", "12", 0.0),
    (r"\boxed{-7}", "7", 0.0),
    ("The answer is 12.", "12", 0.0),
    (r"The answer is \boxed{12", "12", 0.0),
])
def test_math_reward(response, reference, expected):
    assert math_reward(response, reference) == expected


@pytest.mark.parametrize("response, reference, expected", [
    (r"\boxed{ 12 }", "12", 1.0),
    (r"\boxed{\dfrac{1}{2}}", r"\frac{1}{2}", 1.0),
    (r"\boxed{\left( 1, 2 \right)}", "(1,2)", 1.0),
    (r"\boxed{0.5}", r"\frac{1}{2}", 0.0),
    (r"\boxed{}", "", 0.0),
    ("12", "12", 0.0),
])
def test_exact_match_reward(response, reference, expected):
    assert exact_match_reward(response, reference) == expected


@pytest.mark.parametrize("fn", [math_equal, math_reward, exact_match_reward])
def test_checkers_reject_non_strings(fn):
    with pytest.raises(TypeError, match="reference"):
        fn(r"\boxed{1}", 1)


@pytest.fixture
def without_math_verify(monkeypatch):
    """Simulate an environment where math-verify is not installed."""
    monkeypatch.setitem(sys.modules, "math_verify", None)  # import raises ImportError
    rewards._math_verify.cache_clear()
    yield
    rewards._math_verify.cache_clear()


def test_string_fallback_without_math_verify(without_math_verify):
    with pytest.warns(RuntimeWarning, match="math-verify is not installed"):
        assert math_backend() == "string"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reported once only
        assert math_equal(r"\dfrac{1}{2}", r"\frac{1}{2}")
        assert math_equal(" 12 ", "12")
        assert not math_equal("0.5", r"\frac{1}{2}")  # no mathematical equivalence
        assert not math_equal("", "")
        assert math_reward(r"so $\boxed{\frac {3} {4}}$.", r"\frac{3}{4}") == 1.0
