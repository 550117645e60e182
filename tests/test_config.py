"""TrainConfig: published defaults, YAML and command-line overrides, validation messages."""

import pytest

from softgrpo.config import TrainConfig, config_path, load_config, parse_overrides


def test_defaults_are_the_published_runs():
    cfg = TrainConfig()
    assert (cfg.prompts_per_step, cfg.group_size, cfg.mini_batch_prompts, cfg.ppo_epochs) == (
        64, 8, 32, 1)
    assert (cfg.lr, cfg.weight_decay, cfg.grad_clip, cfg.kl_coef) == (1e-6, 0.01, 1.0, 0.001)
    assert (cfg.max_prompt_length, cfg.max_response_length) == (1024, 8192)
    assert (cfg.temperature, cfg.top_p, cfg.k, cfg.after_top_k, cfg.after_top_p) == (
        1.0, 0.95, 5, 5, 0.95)
    assert (cfg.tau, cfg.noise_scale, cfg.noise_clamp) == (0.1, 1.0, (-1.5, 3.0))
    assert (cfg.clip_low, cfg.clip_high, cfg.dual_clip, cfg.kl_kind, cfg.loss_agg) == (
        0.2, 0.2, 3.0, "low_var_kl", "token-mean")


def test_algorithm_picks_the_rollout_mode():
    assert TrainConfig().rollout_config().mode == "soft"
    grpo = TrainConfig(algorithm="grpo").rollout_config(temperature=0.6, seed=7)
    assert (grpo.mode, grpo.temperature, grpo.seed, grpo.max_new_tokens) == (
        "discrete", 0.6, 7, 8192)


def test_shipped_configs_load():
    default = load_config("default")
    assert default.model == "tiny" and default.dataset == "running-sum"
    mnns = load_config("mnns")
    assert (mnns.model, mnns.dataset, mnns.warm_start_teacher) == ("tiny", "mnns",
                                                                   "distribution")
    assert mnns.eval_samples == 32 and mnns.eval_k_list() == [1, 4, 16, 32]
    recipe = load_config("r1-distill-qwen-1.5b")
    assert default.lr >= 100 * recipe.lr  # the tiny model's own learning rate
    assert recipe.model == "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
    assert (recipe.lr, recipe.prompts_per_step, recipe.group_size, recipe.tau) == (
        1e-6, 64, 8, 0.1)


def test_yaml_file_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("steps: 7\nlr: 1e-5\nnoise_clamp: [-1.0, 2.0]\n")
    cfg = load_config(str(path), parse_overrides(
        ["--set", "seed=3", "--group-size", "4", "--chat_template", "--eval_problems=none",
         "--kl_coef", "0"]))
    assert cfg.steps == 7 and cfg.lr == 1e-5  # YAML 1.1 reads 1e-5 as text: converted
    assert cfg.noise_clamp == (-1.0, 2.0)
    assert (cfg.seed, cfg.group_size, cfg.chat_template, cfg.eval_problems, cfg.kl_coef) == (
        3, 4, True, None, 0.0)


def test_evaluation_modes_and_ks():
    cfg = TrainConfig(eval_modes="greedy,soft")
    assert cfg.eval_mode_list() == ["soft", "greedy"]  # the algorithm's own first
    assert TrainConfig(algorithm="grpo").eval_mode_list() == [
        "discrete", "soft", "soft-no-noise", "greedy"]
    assert TrainConfig(eval_samples=8).eval_k_list() == [1, 4, 8]
    assert TrainConfig(eval_ks="32,1").eval_k_list() == [1, 32]
    soft, quiet, discrete, greedy = (cfg.eval_config(m) for m in (
        "soft", "soft-no-noise", "discrete", "greedy"))
    assert (soft.mode, soft.noise_scale, soft.temperature, soft.seed) == ("soft", 1.0, 1.0, 1)
    assert (quiet.mode, quiet.noise_scale, quiet.temperature) == ("soft", 0.0, 1.0)
    assert (discrete.mode, discrete.temperature) == ("discrete", 1.0)
    assert (greedy.mode, greedy.temperature) == ("discrete", 0.0)
    assert TrainConfig(eval_temperature=0.6).eval_config("discrete").temperature == 0.6
    with pytest.raises(ValueError, match="mode must be one of"):
        cfg.eval_config("beam")


def test_multiplex_evaluation_modes():
    cfg = TrainConfig(soft_policy="multiplex", k=4, multiplex_top_k=3, multiplex_top_p=0.9)
    soft, quiet, greedy = (cfg.eval_config(m) for m in ("soft", "soft-no-noise", "greedy"))
    assert (soft.soft_policy, soft.k, soft.temperature) == ("multiplex", 4, 1.0)
    # no draws: the filter's most probable tokens (at most its top-k) by their probabilities
    assert (quiet.soft_policy, quiet.k, quiet.tau, quiet.noise_scale, quiet.top_p) == (
        "gumbel", 3, 1.0, 0.0, 0.9)
    assert (greedy.mode, greedy.soft_policy, greedy.temperature) == ("discrete", "multiplex", 0.0)
    with pytest.raises(ValueError, match="temperature must be > 0 in soft mode"):
        soft.replace(temperature=0.0)


def test_config_round_trips_through_yaml(tmp_path):
    cfg = load_config("default", {"algorithm": "grpo", "noise_clamp": None})
    cfg.save_yaml(tmp_path / "c.yaml")
    again = load_config(str(tmp_path / "c.yaml"))
    assert again == cfg and not cfg.differences(again)
    assert cfg.differences(TrainConfig())["algorithm"] == ("grpo", "softgrpo")


@pytest.mark.parametrize("overrides, error, words", [
    ({"stpes": 3}, ValueError, "did you mean 'steps'"),
    ({"steps": "many"}, TypeError, "steps must be int"),
    ({"lr": "fast"}, TypeError, "lr must be float"),
    ({"steps": 0}, ValueError, "steps must be >= 1"),
    ({"lr": 0}, ValueError, "lr must be in"),
    ({"algorithm": "ppo"}, ValueError, "algorithm must be one of"),
    ({"loss_agg": "sum"}, ValueError, "loss_agg must be one of"),
    ({"reward": "nonsense"}, ValueError, "module:function"),
    ({"prompts_per_step": 10, "mini_batch_prompts": 4}, ValueError, "multiple of"),
    ({"dataset": "data.jsonl"}, ValueError, "pass --model"),
    ({"k": 30}, ValueError, "k must be <= 20"),
    ({"top_p": 1.5}, ValueError, "top_p"),
    ({"noise_clamp": [3, 1]}, ValueError, "noise_clamp"),
    ({"chat_template": "maybe"}, TypeError, "chat_template must be bool"),
    ({"seed": -1}, ValueError, "seed must be"),
    ({"likelihood": "joint"}, ValueError, "likelihood must be one of"),
    ({"likelihood": "exact"}, ValueError, "set noise_clamp to None"),
    ({"conditional_weight": 0.5}, ValueError, "applies to likelihood 'token' only"),
    ({"likelihood": "token", "noise_clamp": "null", "conditional_weight": 2}, ValueError,
     "conditional_weight must be in"),
    ({"eval_modes": "soft,beam"}, ValueError, "eval_modes must be comma-separated names"),
    ({"eval_ks": "1,64"}, ValueError, r"eval_ks must lie in \[1, eval_samples=32\]"),
    ({"eval_ks": "one"}, ValueError, "eval_ks must be comma-separated integers"),
    ({"eval_batch_size": 0}, ValueError, "eval_batch_size must be >= 1"),
    ({"warm_start_teacher": "oracle"}, ValueError, "warm_start_teacher must be one of"),
    ({"warm_start_teacher": "distribution"}, ValueError, "defined for the mnns task only"),
    ({"dataset": "mnns", "warm_start_skip": 0.4}, ValueError, "--config mnns"),
    ({"dataset": "mnns", "task_digits": 7}, ValueError, r"task_digits must be \[3, 6\]"),
    ({"task_digit_range": [5, 5]}, ValueError, r"task_digit_range\[1\] must be \[6, 9\]"),
])
def test_bad_settings_name_the_key(overrides, error, words):
    with pytest.raises(error, match=words):
        load_config(None, overrides)


def test_bad_config_sources(tmp_path):
    with pytest.raises(ValueError, match="no config named 'nope'"):
        config_path("nope")
    with pytest.raises(FileNotFoundError):
        config_path(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ValueError, match="mapping"):
        load_config(str(bad))
    bad.write_text("learning_rate: 1\n")
    with pytest.raises(ValueError, match="unknown setting 'learning_rate' in .*bad.yaml"):
        load_config(str(bad))


@pytest.mark.parametrize("args, message", [
    (["--set", "steps"], "--set needs key=value"),
    (["steps=3"], "unexpected argument"),
])
def test_bad_override_syntax(args, message):
    with pytest.raises(ValueError, match=message):
        parse_overrides(args)
