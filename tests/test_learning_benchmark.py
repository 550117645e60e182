"""Smoke runs of python -m benchmarks.learning (two seeds, two steps, the tiny settings of
test_trainer): the real trainer in worker processes, the tables and the plot; on mnns, both
warm-start teachers, a sweep row on a subset of seeds and one warm start per (seed, teacher)."""

import dataclasses

from test_trainer import TINY

from benchmarks import learning

SMOKE = [arg for key, value in TINY.items() if key not in ("steps", "threads", "progress")
         for arg in (f"--{key}", str(value))]


def _rows(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(f"| {name} |")]


def test_running_sum_two_seeds_two_configurations(tmp_path):
    argv = ["--seeds", "0,1", "--configs", "grpo,token", "--steps", "2", "--workers", "2",
            "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "learning.md"), *SMOKE]
    out = learning.main(argv)
    text = out.read_text()
    main_rows = [r for name in ("grpo", "token") for r in _rows(text, name) if "/2 |" in r]
    assert len(main_rows) == 2 and all(" ± " in row for row in main_rows)
    assert "Pass@2 after - grpo" in text  # TINY samples 2 per problem: Pass@2 is the largest
    assert len(_rows(text, "token")) == 1 + 4  # the main row, then one per decoding mode
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (tmp_path / "runs" / "token" / "seed1" / "summary.json").read_text()
    assert '"seed": 1' in summary
    again = learning.main(argv).read_text()  # finished runs are reused, not rerun
    assert _no_load(again) == _no_load(text)


def _no_load(text: str) -> str:
    """The report without its load-average sentence (the machine's, not the runs')."""
    return text.split("Load average")[0] + text.split("at the end.")[1]


def test_mnns_teachers_sweep_subset_and_shared_warm_starts(tmp_path, monkeypatch):
    sweep = "token-k10"  # on the first two seeds, under the distribution teacher only
    monkeypatch.setitem(learning.TASKS, "mnns",
                        dataclasses.replace(learning.TASKS["mnns"], analyse=(sweep,)))
    runs = tmp_path / "runs"
    argv = ["--task", "mnns", "--seeds", "0-2", "--configs", f"grpo,{sweep}",
            "--steps", "2", "--workers", "2", "--runs", str(runs),
            "--out", str(tmp_path / "mnns.md"), *SMOKE, "--task_digits", "3",
            "--task_digit_range", "[1,5]", "--max_response_length", "7"]
    text = learning.main(argv).read_text()
    assert "## Warm-start teacher: distribution" in text and "## Warm-start teacher: path" in text
    distribution, path = text.split("teacher: path")
    assert "| soft | 2 |" in _rows(distribution, sweep)[0]  # a subset of seeds
    assert not _rows(path, sweep) and not (runs / sweep / "path").exists()
    for teacher, section in (("distribution", distribution), ("path", path)):
        assert "| discrete | 3 |" in _rows(section.split(f"teacher: {teacher}")[-1], "grpo")[0]
        for seed in (0, 1, 2):
            logs = [(runs / name / teacher / f"seed{seed}" / "train.log").read_text()
                    for name in ("grpo", sweep)
                    if name == "grpo" or (seed < 2 and teacher == "distribution")]
            # the first run of a (seed, teacher) warm-starts, the others reuse its weights
            assert sum("(reused " in log for log in logs) == len(logs) - 1
            assert f"({teacher} teacher)" in logs[0]
    assert len(list((runs / "warm-start").iterdir())) == 6
    # the soft-weight analysis of the analysed row, under its teacher, before and after
    weights = [line for line in text.splitlines()
               if line.startswith(f"| {sweep}, distribution teacher | after | 1 |")]
    assert len(weights) == 1 and (tmp_path / "mnns-soft-weights.png").is_file()
