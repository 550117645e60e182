"""Problems for the trainer: the built-in synthetic tasks and user datasets.

A :class:`Problem` is a prompt, its reference answer, and (for the synthetic tasks) a worked
solution used only by the supervised warm start. Two built-in tasks: "running sum" (below)
and "mnns", CoT2's minimum non-negative sum (arXiv 2505.23648), a search task where a soft
step can carry several partial states at once (see the mnns section).

The synthetic task ("running sum") is multi-step integer arithmetic that a tiny model can
learn on a CPU in minutes. A problem is a start value and a few "+ d" / "- d" steps with
single digits d; the running value stays in [0, max_value]. The solution writes every
intermediate value inside the thinking block, then the boxed answer::

    prompt:   "7 + 5 - 3 + 9 = <think>"
    solution: "12 9 18 </think> \\boxed{ 18 }"
    answer:   "18"

The prompt ends with "<think>" as DeepSeek-R1-Distill's chat template does, so everything the
model writes before "</think>" is thinking (soft rows in SofT-GRPO). Every token is separated
by a space: the built-in tokenizer (softgrpo.tiny) splits on whitespace only.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from softgrpo import _checks


@dataclass(frozen=True)
class Problem:
    """prompt: the model's input text. answer: the reference answer (a string).
    solution: a worked response for supervised training, or None."""

    prompt: str
    answer: str
    solution: str | None = None


# ---- the synthetic task ----------------------------------------------------------------------
def running_sum_words(max_value: int) -> list[str]:
    """Every word the running-sum task writes, in a fixed order (the tokenizer's vocabulary)."""
    return ["+", "-", "=", "<think>", "</think>", "\\boxed{", "}",
            *(str(v) for v in range(max_value + 1))]


def running_sum_problem(rng: random.Random, steps: int, max_value: int) -> Problem:
    """One random running-sum problem with ``steps`` operations (see the module docstring)."""
    value = rng.randint(0, 9)
    terms = [str(value)]
    for _ in range(steps):
        ops = [op for op in "+-" if 0 <= value + (1 if op == "+" else -1) <= max_value]
        op = rng.choice(ops)
        digit = rng.randint(1, min(9, max_value - value if op == "+" else value))
        value += digit if op == "+" else -digit
        terms += [op, str(digit)]
    prompt = " ".join(terms) + " = <think>"
    return Problem(prompt=prompt, answer=str(value),
                   solution=running_sum_solution(prompt))


def running_sum_solution(prompt: str, rng: random.Random | None = None,
                         skip: float = 0.0) -> str:
    """The worked solution of a running-sum prompt: "v1 v2 ... </think> \\boxed{ vn }".

    With ``skip`` > 0 (a teacher that takes shortcuts, for a deliberately partial warm start)
    each intermediate value but the last is left out with probability skip, so the next
    written value combines two or more operations, which a tiny model gets wrong more often.
    """
    terms = prompt.removesuffix(" = <think>").split()
    value, written = int(terms[0]), []
    ops = list(zip(terms[1::2], terms[2::2]))
    for i, (op, digit) in enumerate(ops):
        value += int(digit) if op == "+" else -int(digit)
        if i == len(ops) - 1 or not (skip and rng.random() < skip):
            written.append(str(value))
    return " ".join(written) + f" </think> \\boxed{{ {value} }}"


def running_sum_task(seed: int, train_size: int, eval_size: int, steps: int = 3,
                     max_value: int = 30) -> tuple[list[Problem], list[Problem]]:
    """(train, held_out): distinct problems from ``seed``; no held-out prompt is in train.

    Raises:
        ValueError: sizes or ranges out of bounds, or more problems asked than exist.
    """
    _checks.integer("train_size", train_size, 1)
    _checks.integer("eval_size", eval_size, 0)
    _checks.integer("steps", steps, 1)
    _checks.integer("max_value", max_value, 9)
    rng = random.Random(seed)
    wanted, seen, problems = train_size + eval_size, set(), []
    # the problem space is finite: give up after many draws rather than loop forever
    for _ in range(50 * wanted):
        problem = running_sum_problem(rng, steps, max_value)
        if problem.prompt not in seen:
            seen.add(problem.prompt)
            problems.append(problem)
            if len(problems) == wanted:
                return problems[eval_size:], problems[:eval_size]
    raise ValueError(f"the running-sum task with steps={steps}, max_value={max_value} has "
                     f"fewer than train_size + eval_size = {wanted} distinct problems")


# ---- the minimum non-negative sum task (CoT2, arXiv 2505.23648) ------------------------------
# A problem is n digits d_1 .. d_n. Starting from 0, each digit is added or subtracted; the
# answer is the smallest non-negative final value over the 2^n sign choices. The reachable
# set is symmetric (flip every sign), so the answer is also min |final value|. A solution
# writes the partial sums after the first n - 1 signs of one optimal sign choice, then the
# answer (the n-th partial sum)::
#
#     prompt:   "3 5 2 7 <think>"
#     solution: "-3 -8 -6 </think> \\boxed{ 1 }"       (-3 -5 +2 +7 = 1)
#     answer:   "1"
#
# Finding an optimal choice is a search over 2^n paths: a discrete thought commits to one
# partial sum per step, a soft thought can weigh several (CoT2's argument for continuous
# thoughts). The "distribution" teacher (mnns_targets) writes, at step t, the distribution
# over every partial sum reachable after t signs (each of the 2^t sign choices counted once,
# CoT2's continuous supervision).
def mnns_words(digits: int, high: int) -> list[str]:
    """Every word the mnns task with ``digits`` digits of at most ``high`` writes."""
    bound = digits * high
    return ["<think>", "</think>", "\\boxed{", "}", *(str(v) for v in range(-bound, bound + 1))]


def mnns_digits(prompt: str) -> list[int]:
    """The digits of an mnns prompt ("3 5 2 7 <think>" -> [3, 5, 2, 7])."""
    return [int(w) for w in prompt.removesuffix(" <think>").split()]


def mnns_partial_sums(digits: list[int]) -> list[list[int]]:
    """sums[t][j]: the partial sum after t + 1 signs of sign choice j, for all 2^(t+1)
    choices (bit i of j, from the most significant, is 1 when digit i is subtracted)."""
    out, level = [], [0]
    for d in digits:
        level = [s + sign * d for s in level for sign in (1, -1)]
        out.append(level)
    return out


def mnns_answer(digits: list[int]) -> int:
    """The smallest non-negative reachable final value (= the smallest |final value|)."""
    return min(abs(s) for s in mnns_partial_sums(digits)[-1])


def mnns_optimal_paths(digits: list[int]) -> list[list[int]]:
    """The partial sums (after 1 .. n signs) of every optimal sign choice."""
    sums = mnns_partial_sums(digits)
    answer = min(abs(s) for s in sums[-1])
    n = len(digits)
    return [[sums[t][j >> (n - 1 - t)] for t in range(n)]
            for j, final in enumerate(sums[-1]) if final == answer]


def mnns_solution(prompt: str, rng: random.Random | None = None) -> str:
    """The "path" teacher: the first n - 1 partial sums of one optimal sign choice (drawn with
    ``rng``; the first in sign order without it), then the boxed answer."""
    paths = mnns_optimal_paths(mnns_digits(prompt))
    path = rng.choice(paths) if rng is not None else paths[0]
    return " ".join(map(str, path[:-1])) + f" </think> \\boxed{{ {path[-1]} }}"


def mnns_targets(prompt: str) -> list[dict[str, float]]:
    """The "distribution" teacher: one {word: probability} per response word. Thinking step t
    (t = 1 .. n - 1) is the distribution of the partial sum after t signs over all 2^t sign
    choices; then "</think> \\boxed{ answer }", one word each."""
    digits = mnns_digits(prompt)
    steps = []
    for level in mnns_partial_sums(digits)[:-1]:
        counts = Counter(level)
        steps.append({str(v): c / len(level) for v, c in sorted(counts.items())})
    hard = f"</think> \\boxed{{ {mnns_answer(digits)} }}".split()
    return steps + [{word: 1.0} for word in hard]


def mnns_task(seed: int, train_size: int, eval_size: int, digits: int = 4, low: int = 1,
              high: int = 9) -> tuple[list[Problem], list[Problem]]:
    """(train, held_out) mnns problems of ``digits`` digits in [low, high] from ``seed``.

    Held-out problems are disjoint from training ones as multisets: no training problem is
    a reordering of a held-out one (the answer depends only on the multiset), as in CoT2's
    permutation split. Training problems are distinct digit sequences.

    Raises:
        ValueError: sizes or ranges out of bounds (digits in [3, 6], 0 <= low < high <= 9),
            or more problems asked than the split can give.
    """
    _checks.integer("train_size", train_size, 1)
    _checks.integer("eval_size", eval_size, 0)
    _checks.integer("digits", digits, 3, 6)
    _checks.integer("low", low, 0, 8)
    _checks.integer("high", high, low + 1, 9)
    rng = random.Random(seed)

    def draw(count: int, keep, what: str) -> list[tuple[int, ...]]:
        out: list[tuple[int, ...]] = []
        # the problem space is finite: give up after many draws rather than loop forever
        for _ in range(50 * count):
            if len(out) == count:
                return out
            seq = tuple(rng.randint(low, high) for _ in range(digits))
            if keep(seq):
                out.append(seq)
        if len(out) == count:
            return out
        raise ValueError(f"the mnns task with digits={digits}, digit range [{low}, {high}] "
                         f"gave fewer than {count} {what} problems")

    held_keys: set[tuple[int, ...]] = set()
    held = draw(eval_size, lambda s: _new(held_keys, tuple(sorted(s))), "held-out")
    seen: set[tuple[int, ...]] = set()
    train = draw(train_size, lambda s: tuple(sorted(s)) not in held_keys and _new(seen, s),
                 "training")

    def problem(seq: tuple[int, ...]) -> Problem:
        prompt = " ".join(map(str, seq)) + " <think>"
        return Problem(prompt, str(mnns_answer(list(seq))), mnns_solution(prompt))

    return [problem(s) for s in train], [problem(s) for s in held]


def _new(seen: set, key: object) -> bool:
    """Add key to seen; whether it was not there yet."""
    if key in seen:
        return False
    seen.add(key)
    return True


# ---- user datasets ---------------------------------------------------------------------------
def _field(row: dict, column: str) -> object:
    """row[column]; a dotted column ("reward_model.ground_truth") walks nested dicts."""
    value: object = row
    for key in column.split("."):
        if not isinstance(value, dict) or key not in value:
            raise KeyError(column)
        value = value[key]
    return value


def _rows(path: Path) -> Iterator[dict]:
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as err:
                        raise ValueError(f"{path}:{number}: not valid JSON ({err})") from None
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        yield from pq.read_table(path).to_pylist()
    else:
        raise ValueError(f"dataset must be a .jsonl or .parquet file, got {str(path)!r}")


def load_problems(path: str | Path, prompt_column: str = "prompt",
                  answer_column: str = "answer") -> list[Problem]:
    """Problems from a .jsonl or .parquet file with a prompt and an answer column.

    A prompt is a string, or a list of chat messages ({"role", "content"} dicts, as in verl's
    parquet files; the trainer applies the tokenizer's chat template to those, see
    :func:`prompt_text`). Answers that are numbers become strings. A dotted column name reads
    a nested field, e.g. answer_column="reward_model.ground_truth" for verl's files.

    Raises:
        FileNotFoundError: no such file. ValueError: unknown format, bad JSON, an empty file,
        or a row without the columns (naming the row and the columns it has).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset file not found: {str(path)!r}")
    problems = []
    for number, row in enumerate(_rows(path)):
        try:
            prompt, answer = _field(row, prompt_column), _field(row, answer_column)
        except KeyError as err:
            raise ValueError(f"{path}: row {number} has no column {err.args[0]!r} (it has "
                             f"{sorted(row)}); set prompt_column / answer_column") from None
        if isinstance(prompt, list):
            prompt = json.dumps(prompt)  # chat messages travel as JSON text, see prompt_text
        problems.append(Problem(prompt=str(prompt), answer=str(answer)))
    if not problems:
        raise ValueError(f"dataset {str(path)!r} has no rows")
    return problems


def prompt_text(problem: Problem, tokenizer, chat_template: bool) -> str:
    """The text the model sees: with chat_template, the prompt (a string, or chat messages
    stored as JSON by load_problems) goes through tokenizer.apply_chat_template with the
    generation prompt; otherwise the prompt as is."""
    if not chat_template:
        return problem.prompt
    messages = None
    if problem.prompt.startswith("["):
        try:
            messages = json.loads(problem.prompt)
        except json.JSONDecodeError:
            messages = None
    if not isinstance(messages, list):
        messages = [{"role": "user", "content": problem.prompt}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


class PromptSampler:
    """Endless, seeded, epoch-wise shuffled order over n problems; its position is part of a
    checkpoint (state_dict / load_state_dict), so a resumed run sees the same prompts."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed = _checks.integer("n", n, 1), seed
        self.epoch, self.index = 0, 0
        self._order = self._shuffle()

    def _shuffle(self) -> list[int]:
        order = list(range(self.n))
        random.Random(f"{self.seed}:{self.epoch}").shuffle(order)
        return order

    def take(self, count: int) -> list[int]:
        """The next ``count`` problem indices (crossing epoch boundaries as needed)."""
        out = []
        while len(out) < count:
            if self.index == self.n:
                self.epoch, self.index = self.epoch + 1, 0
                self._order = self._shuffle()
            step = min(count - len(out), self.n - self.index)
            out += self._order[self.index:self.index + step]
            self.index += step
        return out

    def state_dict(self) -> dict[str, int]:
        return {"n": self.n, "seed": self.seed, "epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if (state["n"], state["seed"]) != (self.n, self.seed):
            raise ValueError(f"checkpoint's data order (n={state['n']}, seed={state['seed']}) "
                             f"does not match this run's (n={self.n}, seed={self.seed})")
        self.epoch, self.index = state["epoch"], state["index"]
        self._order = self._shuffle()
