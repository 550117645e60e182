"""The built-in task, dataset files, the prompt order, the tiny model and its warm start."""

import json
import random

import pytest
import torch

from softgrpo.tasks import (
    Problem,
    PromptSampler,
    load_problems,
    prompt_text,
    running_sum_solution,
    running_sum_task,
    running_sum_words,
)
from softgrpo.tiny import build_model, build_tokenizer, warm_start


def _value(prompt: str) -> int:
    """The prompt's arithmetic, computed independently of the task code."""
    return eval(prompt.removesuffix(" = <think>"))


def test_running_sum_problems_are_correct_distinct_and_split():
    train, held_out = running_sum_task(seed=3, train_size=500, eval_size=50, steps=4,
                                       max_value=20)
    assert len(train) == 500 and len(held_out) == 50
    prompts = [p.prompt for p in train + held_out]
    assert len(set(prompts)) == 550  # distinct, so no held-out prompt is in train
    for p in train + held_out:
        assert p.answer == str(_value(p.prompt))
        thoughts, rest = p.solution.split(" </think> ")
        assert rest == f"\\boxed{{ {p.answer} }}" and len(thoughts.split()) == 4
        assert all(0 <= int(v) <= 20 for v in thoughts.split())
    again, _ = running_sum_task(seed=3, train_size=500, eval_size=50, steps=4, max_value=20)
    assert again == train
    other, _ = running_sum_task(seed=4, train_size=500, eval_size=50, steps=4, max_value=20)
    assert other != train


def test_shortcut_teacher_skips_values_but_keeps_the_answer():
    (problem,), _ = running_sum_task(seed=0, train_size=1, eval_size=0)
    rng = random.Random(0)
    solutions = [running_sum_solution(problem.prompt, rng, skip=0.5) for _ in range(200)]
    assert running_sum_solution(problem.prompt) == problem.solution
    full = problem.solution.split(" </think> ")[0].split()
    lengths = []
    for s in solutions:
        thoughts, rest = s.split(" </think> ")
        assert rest == f"\\boxed{{ {problem.answer} }}"  # the answer is always right
        values = thoughts.split()
        assert values[-1] == problem.answer and set(values) <= set(full)
        lengths.append(len(values))
    # two skippable values: 3 written w.p. 1/4, 2 w.p. 1/2, 1 w.p. 1/4
    assert 0.15 < lengths.count(1) / 200 < 0.35 and 0.15 < lengths.count(3) / 200 < 0.35


def test_too_many_problems_asked():
    with pytest.raises(ValueError, match="fewer than"):
        running_sum_task(seed=0, train_size=5000, eval_size=0, steps=1, max_value=9)


def test_load_problems_jsonl_parquet_nested(tmp_path):
    rows = [{"prompt": "1+1?", "answer": 2},
            {"prompt": [{"role": "user", "content": "2+2?"}], "answer": "4"}]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    problems = load_problems(path)
    assert problems[0] == Problem("1+1?", "2")
    assert json.loads(problems[1].prompt) == rows[1]["prompt"]

    import pyarrow as pa
    import pyarrow.parquet as pq

    nested = tmp_path / "verl.parquet"
    pq.write_table(pa.Table.from_pylist(
        [{"question": "3+3?", "reward_model": {"ground_truth": "6"}}]), nested)
    assert load_problems(nested, "question", "reward_model.ground_truth") == [
        Problem("3+3?", "6")]
    with pytest.raises(ValueError, match="no column 'answer'.*question"):
        load_problems(nested, "question")
    (tmp_path / "d.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match=".jsonl or .parquet"):
        load_problems(tmp_path / "d.csv")
    with pytest.raises(FileNotFoundError):
        load_problems(tmp_path / "missing.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"prompt": 1, "answer": 2}\n{oops\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        load_problems(tmp_path / "bad.jsonl")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="no rows"):
        load_problems(tmp_path / "empty.jsonl")


def test_prompt_text_applies_the_chat_template():
    class Template:
        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            assert not tokenize and add_generation_prompt
            return "|".join(f"{m['role']}:{m['content']}" for m in messages) + "|assistant:"

    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert prompt_text(Problem("hi", "x"), Template(), True) == "user:hi|assistant:"
    assert prompt_text(Problem(json.dumps(messages), "x"), Template(), True) == (
        "system:be brief|user:hi|assistant:")
    assert prompt_text(Problem("[not json", "x"), Template(), True) == (
        "user:[not json|assistant:")
    assert prompt_text(Problem("hi", "x"), Template(), False) == "hi"


def test_prompt_sampler_epochs_and_resume():
    sampler = PromptSampler(5, seed=1)
    first = sampler.take(3) + sampler.take(4)
    assert sorted(first[:5]) == list(range(5))  # one epoch is a permutation
    state = sampler.state_dict()
    rest = sampler.take(6)
    resumed = PromptSampler(5, seed=1)
    resumed.load_state_dict(state)
    assert resumed.take(6) == rest
    with pytest.raises(ValueError, match="does not match"):
        PromptSampler(6, seed=1).load_state_dict(state)


def test_tiny_tokenizer_round_trip_and_warm_start_learns():
    tokenizer = build_tokenizer(running_sum_words(30))
    train, _ = running_sum_task(seed=0, train_size=64, eval_size=0)
    text = train[0].prompt + " " + train[0].solution
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids and tokenizer.decode(ids) == text
    assert tokenizer.encode("</think>", add_special_tokens=False) != []
    with pytest.raises(ValueError, match="distinct"):
        build_tokenizer(["a", "a"])
    model = build_model(tokenizer, hidden_size=32, layers=1, heads=2, seed=0)
    same = build_model(tokenizer, hidden_size=32, layers=1, heads=2, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), same.parameters()))
    state = torch.get_rng_state()
    losses = warm_start(model, tokenizer, train, steps=30, batch_size=16, lr=3e-3, seed=0)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone
    assert len(losses) == 30 and losses[-1] < 0.75 * losses[0]
    with pytest.raises(ValueError, match="worked solution"):
        warm_start(model, tokenizer, [Problem("1 + 1 = <think>", "2")], steps=1, batch_size=1)
