"""The built-in tasks, dataset files, the prompt order, the tiny model and its warm start."""

import itertools
import json
import math
import random

import pytest
import torch

from softgrpo.tasks import (
    Problem,
    PromptSampler,
    load_problems,
    mnns_digits,
    mnns_solution,
    mnns_targets,
    mnns_task,
    mnns_words,
    prompt_text,
    running_sum_solution,
    running_sum_task,
    running_sum_words,
)
from softgrpo.tiny import _sft_batch, build_model, build_tokenizer, sft_loss, warm_start


@pytest.fixture
def one_thread():
    """Warm starts on one torch thread: several threads on a busy 2-core machine are slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


def test_tiny_tokenizer_round_trip_and_warm_start_learns(one_thread):
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


def _finals(digits):
    """Every final value of every sign choice, by brute force over the sign tuples."""
    return [sum(s * d for s, d in zip(signs, digits))
            for signs in itertools.product((1, -1), repeat=len(digits))]


def test_mnns_problems_are_correct_distinct_and_split_by_multiset():
    train, held_out = mnns_task(seed=2, train_size=1500, eval_size=60, digits=4, low=1, high=9)
    assert len(train) == 1500 and len(held_out) == 60
    assert len({p.prompt for p in train}) == 1500
    held = {tuple(sorted(mnns_digits(p.prompt))) for p in held_out}
    assert len(held) == 60  # one problem per multiset
    assert not any(tuple(sorted(mnns_digits(p.prompt))) in held for p in train)
    answers = set()
    for p in train + held_out:
        digits = mnns_digits(p.prompt)
        assert p.prompt == " ".join(map(str, digits)) + " <think>" and len(digits) == 4
        assert all(1 <= d <= 9 for d in digits)
        best = min(v for v in _finals(digits) if v >= 0)
        assert p.answer == str(best)
        answers.add(best)
        assert p.solution == mnns_solution(p.prompt)
    assert len(answers) > 4  # not a constant answer
    assert mnns_task(seed=2, train_size=1500, eval_size=60) == (train, held_out)
    assert mnns_task(seed=3, train_size=1500, eval_size=60)[0] != train
    with pytest.raises(ValueError, match="fewer than 10 training"):
        mnns_task(seed=0, train_size=10, eval_size=3, digits=3, low=1, high=2)
    with pytest.raises(ValueError, match="digits must be"):
        mnns_task(seed=0, train_size=10, eval_size=3, digits=7)


def test_mnns_path_teacher_writes_optimal_sign_choices():
    prompt = "4 1 2 3 <think>"  # answer 0, reached by +4 +1 -2 -3 and by -4 -1 +2 +3
    rng = random.Random(0)
    seen = set()
    for _ in range(100):
        thoughts, rest = mnns_solution(prompt, rng).split(" </think> ")
        assert rest == "\\boxed{ 0 }"
        sums = [0, *map(int, thoughts.split()), 0]
        assert [abs(b - a) for a, b in itertools.pairwise(sums)] == [4, 1, 2, 3]
        seen.add(thoughts)
    assert seen == {"4 5 3", "-4 -5 -3"}  # each optimal choice is drawn
    assert mnns_solution("3 5 2 7 <think>") == "-3 -8 -6 </think> \\boxed{ 1 }"


def test_mnns_distribution_teacher_weighs_every_reachable_partial_sum():
    targets = mnns_targets("3 5 2 7 <think>")
    assert targets[:2] == [{"3": 0.5, "-3": 0.5},
                           {"8": 0.25, "-2": 0.25, "2": 0.25, "-8": 0.25}]
    # after 3 signs: 3 + 5 - 2 = 6 ... ; 0 is reached twice (+3 -5 +2 and -3 +5 -2)
    assert targets[2] == {"10": 0.125, "6": 0.125, "4": 0.125, "0": 0.25, "-4": 0.125,
                          "-6": 0.125, "-10": 0.125}
    assert targets[3:] == [{"</think>": 1.0}, {"\\boxed{": 1.0}, {"1": 1.0}, {"}": 1.0}]
    tokenizer = build_tokenizer(mnns_words(4, 9))
    words = " ".join(w for step in targets for w in step)
    assert tokenizer.unk_token_id not in tokenizer(words, add_special_tokens=False)["input_ids"]


def test_soft_targets_loss_is_the_kl_with_soft_inputs():
    """sft_loss against a naive float64 computation: inputs sum_j w_j E[id_j] built by hand,
    KL(target || model) per response position, the mean over those positions."""
    tokenizer = build_tokenizer(mnns_words(3, 5))
    model = build_model(tokenizer, hidden_size=16, layers=1, heads=2, seed=1).double()
    pairs = [("3 5 2 <think>", mnns_targets("3 5 2 <think>")),
             ("1 4 <think>", "5 </think> \\boxed{ 3 }")]  # a text target, shorter
    batch = _sft_batch(tokenizer, pairs)
    ids, weights, mask, response = batch
    assert ids.shape[:2] == (2, 4 + 6 + 1) and weights.sum(-1).eq(1).all()
    loss = sft_loss(model, ids, weights.double(), mask, response)
    table = model.get_input_embeddings().weight
    expected = []
    for b, (prompt, target) in enumerate(pairs):
        n = int(mask[b].sum())
        inputs = torch.stack([sum(float(w) * table[int(i)] for i, w in zip(ids[b, t], weights[b, t]))
                              for t in range(n)])
        logp = torch.log_softmax(model(inputs_embeds=inputs[None]).logits[0], -1)
        for t in range(1, n):
            if response[b, t]:
                expected.append(sum(float(w) * (math.log(w) - logp[t - 1, int(i)])
                                    for i, w in zip(ids[b, t], weights[b, t]) if w > 0))
    assert float(loss) == pytest.approx(sum(expected).item() / len(expected), rel=1e-10)


def test_distribution_warm_start_learns_the_reachable_sums(one_thread):
    tokenizer = build_tokenizer(mnns_words(3, 5))
    train, _ = mnns_task(seed=0, train_size=100, eval_size=0, digits=3, low=1, high=5)
    model = build_model(tokenizer, hidden_size=32, layers=1, heads=2, seed=0)
    losses = warm_start(model, tokenizer, train, steps=150, batch_size=32, lr=1e-2, seed=0,
                        solution=lambda p, rng: mnns_targets(p.prompt))
    assert losses[-1] < 0.25 * losses[0]
    ids = tokenizer("4 1 3 <think>", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        p = torch.softmax(model(ids).logits[0, -1], -1)
    both = p[tokenizer.convert_tokens_to_ids(["4", "-4"])]
    assert both.sum() > 0.8 and both.min() > 0.25  # both first partial sums, about evenly
