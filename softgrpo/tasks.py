"""Problems for the trainer: the built-in synthetic task and user datasets.

A :class:`Problem` is a prompt, its reference answer, and (for the synthetic task) a worked
solution used only by the supervised warm start.

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
