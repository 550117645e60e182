"""softgrpo.adapters.hf rollouts on tiny local models: incremental vs full forward, the
contract's noise keying, replay and batch independence, think-end detection (one token and
a split "</think>"), forced think-end, EOS, discrete mode, custom_generate, the backend,
save/load and slicing, and bad-input errors raised before any model work."""

import math

import pytest
import torch
from hf_models import ARCHS, boost, make_model, make_tokenizer, model_and_tokenizer

from softgrpo import SoftThinkingConfig, noise_key, soft_sample
from softgrpo.adapters.hf import (
    HFRolloutBackend,
    RolloutTrace,
    generate,
    soft_thinking_decoding,
)
from softgrpo.rollout import Rollout, select, to_discrete

PROMPTS = ["1 + 2 = <think>", "x y", "so we get 3 4 5 6 7 8 9", "the answer is"]
CONFIG = SoftThinkingConfig(max_new_tokens=16, seed=1234)


def full_forward_logits(model, trace, prompt, steps):
    """Logits of one forward over the fed embeddings; position P-1+t predicts step t."""
    fed = trace.fed[:, :prompt + steps - 1].long()
    with torch.no_grad():
        logits = model(inputs_embeds=trace.inputs[:, :prompt + steps - 1], attention_mask=fed,
                       position_ids=(fed.cumsum(-1) - 1).clamp(min=0)).logits
    return logits[:, prompt - 1:].float()


def think_end_index(rollout):
    """(B,) first response position that is not a soft row (L when the row never ended)."""
    ended = rollout.response_mask & ~rollout.thinking_mask
    steps = rollout.response_ids.shape[1]
    first = torch.where(ended, torch.arange(steps), steps)
    return first.min(dim=1).values


def pattern_ends(ids, pattern):
    """(L,) bool: ids[: t + 1] ends with pattern."""
    n = len(pattern)
    hits = torch.zeros(ids.shape[0], dtype=torch.bool)
    for t in range(n - 1, ids.shape[0]):
        hits[t] = ids[t - n + 1:t + 1].tolist() == pattern
    return hits


@pytest.mark.parametrize("arch", ARCHS)
def test_incremental_matches_full_forward(arch):
    model, tokenizer = model_and_tokenizer(arch)
    trace = RolloutTrace()
    rollout = generate(model, tokenizer, PROMPTS, CONFIG, trace=trace)
    prompt, steps = rollout.prompt_ids.shape[1], rollout.response_ids.shape[1]
    full = full_forward_logits(model, trace, prompt, steps)
    mask = rollout.response_mask
    assert mask.sum() >= 2 * steps and rollout.thinking_mask.any()
    torch.testing.assert_close(trace.logits[mask], full[mask], rtol=0, atol=1e-5)
    # the trace's fed positions are exactly the rollout's inputs: prompt, then all but the last
    fed = torch.cat([rollout.prompt_mask, rollout.response_mask], 1)
    fed[torch.arange(len(PROMPTS)), prompt + mask.sum(1) - 1] = False
    assert torch.equal(trace.fed, fed)


def test_records_follow_the_noise_keying():
    """Every step's records equal soft_sample on that step's logits with
    seed = noise_key(config.seed, sequence id), offset = t (the think-end step converted)."""
    model, tokenizer = model_and_tokenizer("phi")
    boost(model, tokenizer, ["</think>"], 2.0)
    sequence_ids = torch.tensor([5, 0, 11, 2])
    config = CONFIG.replace(max_new_tokens=20)
    trace = RolloutTrace()
    rollout = generate(model, tokenizer, PROMPTS, config, sequence_ids=sequence_ids,
                       trace=trace)
    end = think_end_index(rollout)
    assert (end < rollout.response_ids.shape[1]).any(), "no row ended thinking"
    assert (end + 1 < rollout.response_mask.sum(1)).any(), "no discrete step after a think-end"
    keys = noise_key(config.seed, sequence_ids)
    for t in range(rollout.response_ids.shape[1]):
        rows = rollout.response_mask[:, t]
        logits = trace.logits[rows, t]
        sample = soft_sample(logits, config.k, temperature=config.temperature,
                             top_p=config.top_p, tau=config.tau, seed=keys[rows], offset=t,
                             thinking=t <= end[rows], discrete_k=config.after_top_k,
                             discrete_top_p=config.after_top_p)
        sample = to_discrete(sample, t == end[rows], logits, config.temperature)
        assert torch.equal(sample.ids, rollout.topk_ids[rows, t])
        assert torch.equal(sample.perturbed, rollout.perturbed[rows, t])
        assert torch.equal(sample.logprob, rollout.logprobs[rows, t])
        assert torch.equal(sample.token, rollout.response_ids[rows, t])


def test_rollout_record_layout():
    model, tokenizer = model_and_tokenizer("qwen2")
    rollout = generate(model, tokenizer, PROMPTS, CONFIG)
    rows, steps = rollout.response_ids.shape
    assert rollout.topk_ids.shape == rollout.perturbed.shape == (rows, steps, CONFIG.k)
    assert rollout.perturbed.dtype == rollout.logprobs.dtype == torch.float32
    encoded = tokenizer(PROMPTS, padding=True, padding_side="left", return_tensors="pt")
    assert torch.equal(rollout.prompt_ids, encoded["input_ids"])
    assert torch.equal(rollout.prompt_mask, encoded["attention_mask"].bool())
    mask = rollout.response_mask
    lengths = mask.sum(1)
    assert torch.equal(mask, torch.arange(steps) < lengths[:, None])  # right padding
    assert (rollout.response_ids[~mask] == tokenizer.pad_token_id).all()
    assert (rollout.topk_ids[~mask] == 0).all() and (rollout.perturbed[~mask] == 0).all()
    assert torch.equal(rollout.response_ids[mask], rollout.topk_ids[..., 0][mask])
    soft = rollout.thinking_mask
    assert soft.any() and not (soft & ~mask).any()
    assert (rollout.topk_ids[soft][:, 1:] != 0).any(dim=1).all()  # soft rows are not discrete
    assert (rollout.logprobs[mask] < 0).all()
    assert torch.equal(rollout.sequence_ids, torch.arange(rows))
    assert rollout.texts == tokenizer.batch_decode(
        [r[m].tolist() for r, m in zip(rollout.response_ids, mask)], skip_special_tokens=True)
    assert rollout.config == CONFIG and not rollout.forced_mask.any()


def test_replay_is_bit_identical_and_keyed_by_sequence():
    model, tokenizer = model_and_tokenizer("llama")
    sequence_ids = torch.tensor([3, 1, 4, 8])
    first = generate(model, tokenizer, PROMPTS, CONFIG, sequence_ids=sequence_ids)
    again = generate(model, tokenizer, PROMPTS, CONFIG, sequence_ids=sequence_ids)
    for name, value in first.tensors().items():
        assert torch.equal(value, getattr(again, name)), name
    assert first.texts == again.texts
    other_seed = generate(model, tokenizer, PROMPTS, CONFIG.replace(seed=99),
                          sequence_ids=sequence_ids)
    other_rows = generate(model, tokenizer, PROMPTS, CONFIG, sequence_ids=sequence_ids + 10)
    for other in (other_seed, other_rows):
        assert not torch.equal(first.perturbed[:, 0], other.perturbed[:, 0])


@pytest.mark.parametrize("arch", ["qwen2", "llama", "phi"])
def test_row_alone_equals_row_in_batch(arch):
    """Exact: the noise (keyed by sequence and position), hence every id, mask and text.
    Within fp32 tolerance: perturbed values and log-probs (other padding and batch shapes
    round the logits differently; the soft-token feedback loop carries that forward)."""
    model, tokenizer = model_and_tokenizer(arch)
    sequence_ids = torch.tensor([7, 3, 9, 1])
    batch = generate(model, tokenizer, PROMPTS, CONFIG, sequence_ids=sequence_ids)
    for i, prompt in enumerate(PROMPTS):
        alone = generate(model, tokenizer, [prompt], CONFIG, sequence_ids=sequence_ids[i:i + 1])
        steps = alone.response_ids.shape[1]
        assert not batch.response_mask[i, steps:].any()
        for name in ("response_ids", "topk_ids", "response_mask", "thinking_mask"):
            assert torch.equal(getattr(alone, name)[0], getattr(batch, name)[i, :steps]), name
        for name in ("perturbed", "logprobs"):
            torch.testing.assert_close(getattr(alone, name)[0], getattr(batch, name)[i, :steps],
                                       rtol=0, atol=1e-5)
        assert alone.texts[0] == batch.texts[i] and alone.finished[0] == batch.finished[i]


@pytest.mark.parametrize("split", [False, True])
def test_thinking_ends_after_the_full_think_end_sequence(split):
    """Soft rows until the text tokens end with the whole think-end sequence; that step is a
    discrete row with the token's log-prob, and every later step is discrete. With a split
    "</think>" its last sub-token alone (">") does not end thinking."""
    tokenizer = make_tokenizer(split_think_end=split)
    pattern = tokenizer.encode("</think>", add_special_tokens=False)
    assert len(pattern) == (3 if split else 1)
    model = make_model("phi", len(tokenizer), tokenizer=tokenizer)
    boost(model, tokenizer, tokenizer.convert_ids_to_tokens(pattern), 3.0 if split else -1.5)
    prompts = PROMPTS * 3
    trace = RolloutTrace()
    config = CONFIG.replace(max_new_tokens=24)
    rollout = generate(model, tokenizer, prompts, config, trace=trace)
    end = think_end_index(rollout)
    steps = rollout.response_ids.shape[1]
    lone_last_subtoken = 0
    for b in range(len(prompts)):
        ids, mask = rollout.response_ids[b], rollout.response_mask[b]
        hits = pattern_ends(ids, pattern) & mask
        j = int(end[b])
        if not hits.any():
            assert j == steps and torch.equal(rollout.thinking_mask[b], mask)
            continue
        assert j == int(hits.nonzero()[0])
        assert rollout.thinking_mask[b, :j].all() and not rollout.thinking_mask[b, j:].any()
        assert rollout.topk_ids[b, j].tolist() == [pattern[-1]] + [0] * (config.k - 1)
        z = trace.logits[b, j] / config.temperature
        torch.testing.assert_close(rollout.logprobs[b, j],
                                   torch.log_softmax(z, -1)[pattern[-1]], rtol=0, atol=1e-6)
        assert (rollout.topk_ids[b, j:][mask[j:]][:, 1:] == 0).all()  # discrete from then on
        lone_last_subtoken += int((ids[:j] == pattern[-1]).sum())
    assert (end < steps).sum() >= 2, "too few rows ended thinking"
    if split:
        assert lone_last_subtoken > 0, "no '>' before a think-end: the split case is untested"


@pytest.mark.parametrize("mode", ["soft", "discrete"])
def test_max_thinking_tokens_forces_the_think_end(mode):
    tokenizer = make_tokenizer(split_think_end=True)
    pattern = tokenizer.encode("</think>", add_special_tokens=False)
    model = make_model("qwen2", len(tokenizer), tokenizer=tokenizer)
    config = CONFIG.replace(max_thinking_tokens=4, max_new_tokens=12, mode=mode)
    trace = RolloutTrace()
    rollout = generate(model, tokenizer, PROMPTS, config, trace=trace)
    forced = rollout.forced_mask
    for b in range(len(PROMPTS)):
        ids, mask = rollout.response_ids[b], rollout.response_mask[b]
        natural = pattern_ends(ids[:4], pattern) & mask[:4]
        if natural.any() or mask.sum() <= 4:
            continue
        assert forced[b].nonzero().squeeze(1).tolist() == [4, 5, 6][:int(mask.sum()) - 4]
        assert ids[4:7].tolist() == pattern[:int(mask.sum()) - 4]
        assert rollout.thinking_mask[b, :4].all() == (mode == "soft")
        assert not rollout.thinking_mask[b, 4:].any()
        for t in range(4, min(7, int(mask.sum()))):
            lp = torch.log_softmax(trace.logits[b, t] / config.temperature, -1)[ids[t]]
            torch.testing.assert_close(rollout.logprobs[b, t], lp, rtol=0, atol=1e-6)
            assert rollout.topk_ids[b, t, 1:].eq(0).all()
    assert forced.any()
    assert not (forced & rollout.thinking_mask).any()


def test_rows_stop_at_eos_and_do_no_more_work():
    model, tokenizer = model_and_tokenizer("phi")
    boost(model, tokenizer, ["<eos>"], -1.0)
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("=")
    eos = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("=")}
    prompts = PROMPTS * 2
    config = CONFIG.replace(max_new_tokens=24)
    trace = RolloutTrace()
    rollout = generate(model, tokenizer, prompts, config, trace=trace)
    lengths = rollout.response_mask.sum(1)
    assert rollout.response_ids.shape[1] == int(lengths.max())
    assert rollout.finished.any() and (lengths < config.max_new_tokens).any()
    for b in range(len(prompts)):
        ids = rollout.response_ids[b, :lengths[b]].tolist()
        assert bool(rollout.finished[b]) == (ids[-1] in eos)
        assert not eos & set(ids[:-1])
        assert bool(rollout.finished[b]) or lengths[b] == config.max_new_tokens
        assert not trace.logits[b, lengths[b]:].any()  # no step ran for a finished row
    assert rollout.finished.sum() < len(prompts) or lengths.min() < lengths.max()


def test_discrete_mode_samples_every_step_with_the_after_thinking_filter():
    """Also: every input is a token, so the step logits equal the model's own forward on the
    token ids (through Gemma's scaled embedding module)."""
    model, tokenizer = model_and_tokenizer("gemma")
    config = CONFIG.replace(mode="discrete", after_top_k=3, after_top_p=1.0)
    trace = RolloutTrace()
    rollout = generate(model, tokenizer, PROMPTS, config, trace=trace)
    mask = rollout.response_mask
    assert not rollout.thinking_mask.any()
    assert (rollout.topk_ids[mask][:, 1:] == 0).all()
    logits = trace.logits[mask]
    tokens = rollout.response_ids[mask]
    top3 = logits.topk(3, dim=-1).indices
    assert (top3 == tokens[:, None]).any(dim=1).all()
    lp = torch.log_softmax(logits, -1).gather(-1, tokens[:, None]).squeeze(1)
    torch.testing.assert_close(rollout.logprobs[mask], lp, rtol=0, atol=1e-6)
    ids = torch.cat([rollout.prompt_ids, rollout.response_ids], 1)[:, :-1]
    attention = torch.cat([rollout.prompt_mask, mask], 1)[:, :-1].long()
    with torch.no_grad():
        own = model(input_ids=ids, attention_mask=attention,
                    position_ids=(attention.cumsum(-1) - 1).clamp(min=0)).logits
    prompt = rollout.prompt_ids.shape[1]
    torch.testing.assert_close(own[:, prompt - 1:][mask], logits, rtol=0, atol=1e-5)


def test_custom_generate_gives_the_same_rollout():
    model, tokenizer = model_and_tokenizer("qwen2")
    encoded = tokenizer(PROMPTS, padding=True, padding_side="left", return_tensors="pt")
    sequence_ids = torch.tensor([2, 0, 1, 3])
    direct = generate(model, tokenizer, config=CONFIG, sequence_ids=sequence_ids, **encoded)
    via_hf = model.generate(**encoded, max_new_tokens=CONFIG.max_new_tokens,
                            custom_generate=soft_thinking_decoding(
                                tokenizer, CONFIG, sequence_ids=sequence_ids))
    assert isinstance(via_hf, Rollout)
    for name, value in direct.tensors().items():
        assert torch.equal(value, getattr(via_hf, name)), name
    full = tokenizer(PROMPTS[:1] * 2, return_tensors="pt")  # unpadded: transformers drops the mask
    ones = model.generate(**full, max_new_tokens=CONFIG.max_new_tokens,
                          custom_generate=soft_thinking_decoding(tokenizer, CONFIG))
    assert torch.equal(ones.response_ids, generate(model, tokenizer, PROMPTS[:1] * 2,
                                                   CONFIG).response_ids)


def test_backend_generate_and_load_weights():
    model, tokenizer = model_and_tokenizer("qwen2")
    backend = HFRolloutBackend(model, tokenizer)
    sequence_ids = torch.tensor([4, 5, 6, 7])
    rollout = backend.generate(PROMPTS, CONFIG, sequence_ids)
    assert torch.equal(rollout.perturbed, generate(model, tokenizer, PROMPTS, CONFIG,
                                                   sequence_ids=sequence_ids).perturbed)
    backend.load_weights(model)  # same object: nothing to copy
    other = make_model("qwen2", len(tokenizer), tokenizer=tokenizer, seed=5)
    backend.load_weights(other)
    for name, value in other.state_dict().items():
        assert torch.equal(value, model.state_dict()[name]), name
    assert not torch.equal(backend.generate(PROMPTS, CONFIG, sequence_ids).perturbed,
                           rollout.perturbed)


def test_generate_restores_train_mode_and_shows_progress(capsys):
    model, tokenizer = model_and_tokenizer("llama")
    model.train()
    rollout = generate(model, tokenizer, PROMPTS[:2], CONFIG.replace(max_new_tokens=3),
                       progress=True)
    assert model.training and rollout.response_ids.shape[1] <= 3
    assert "soft rollout" in capsys.readouterr().err


def test_save_load_and_select(tmp_path):
    model, tokenizer = model_and_tokenizer("qwen2")
    rollout = generate(model, tokenizer, PROMPTS, CONFIG.replace(max_thinking_tokens=5,
                                                                 noise_clamp=(-2.0, 2.5),
                                                                 top_p=0.7))
    assert (rollout.perturbed == -math.inf).any()  # cut slots survive the round trip
    rollout.save(tmp_path / "rollout.pt")
    loaded = Rollout.load(tmp_path / "rollout.pt")
    for name, value in rollout.tensors().items():
        assert torch.equal(value, getattr(loaded, name)), name
    assert loaded.texts == rollout.texts and loaded.config == rollout.config
    for index, rows in (([2, 0], [2, 0]), (torch.tensor([False, True, False, True]), [1, 3]),
                        (slice(1, 3), [1, 2]), (torch.tensor([3]), [3])):
        part = select(rollout, index)
        for name, value in rollout.tensors().items():
            assert torch.equal(getattr(part, name), value[rows]), name
        assert part.texts == [rollout.texts[i] for i in rows] and part.config == rollout.config
    with pytest.raises(ValueError, match="index"):
        select(rollout, [4])
    with pytest.raises(ValueError, match="bool index"):
        select(rollout, torch.tensor([True, False]))


def _never_called(model):
    calls = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize("change, match", [
    (dict(config=CONFIG.replace(max_new_tokens=250)), "max_position_embeddings"),
    (dict(config=CONFIG.replace(think_end="<nothink>")), "think_end"),
    (dict(config=CONFIG.replace(after_top_k=1000)), "after_top_k"),
    (dict(config=CONFIG.replace(think_end="  ")), "think_end"),  # encodes to no token
    (dict(sequence_ids=torch.tensor([0, 1])), "sequence_ids"),
    (dict(sequence_ids=torch.tensor([0, 1, 2, -1])), "sequence_ids"),
    (dict(sequence_ids=torch.tensor([0, 1, 1, 2])), "distinct"),
    (dict(input_ids=torch.tensor([[5, 6]] * 4)), "exactly one"),
])
def test_bad_input_raises_before_any_work(change, match):
    model, tokenizer = model_and_tokenizer("qwen2")
    calls = _never_called(model)
    kwargs = dict(prompts=PROMPTS, config=CONFIG)
    kwargs.update(change)
    with pytest.raises(ValueError, match=match):
        generate(model, tokenizer, **kwargs)
    assert not calls


def test_bad_prompts_and_tokenizers_raise_before_any_work():
    model, tokenizer = model_and_tokenizer("qwen2")
    calls = _never_called(model)
    long_prompt = " ".join(["1"] * 250)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        generate(model, tokenizer, [long_prompt, "x"], CONFIG)
    with pytest.raises(ValueError, match="pad token"):
        generate(model, make_tokenizer(pad=False), PROMPTS, CONFIG)
    with pytest.raises(TypeError, match="SoftThinkingConfig"):
        generate(model, tokenizer, PROMPTS, dict(k=5))
    with pytest.raises(TypeError, match="prompts"):
        generate(model, tokenizer, "x y", CONFIG)
    ids = torch.tensor([[5, 6, 0], [7, 8, 9]])
    with pytest.raises(ValueError, match="left-padded"):
        generate(model, tokenizer, config=CONFIG, input_ids=ids,
                 attention_mask=torch.tensor([[1, 1, 0], [1, 1, 1]]))
    with pytest.raises(ValueError, match="input_ids must lie"):
        generate(model, tokenizer, config=CONFIG, input_ids=ids + 100)
    small = make_tokenizer(words=("a", "b", "c"))
    tiny = make_model("qwen2", len(small), tokenizer=small)
    tiny_calls = _never_called(tiny)
    assert len(small) < 10
    with pytest.raises(ValueError, match="config.k=10 is larger than the model's vocabulary"):
        generate(tiny, small, ["a b"], CONFIG.replace(k=10))
    assert not calls and not tiny_calls
