"""A smoke run of python -m benchmarks.learning (two seeds, two steps, the tiny settings of
test_trainer): the real trainer in worker processes, the table and the plot."""

from test_trainer import TINY

from benchmarks import learning


def test_two_seeds_two_configurations(tmp_path):
    tiny = [arg for key, value in TINY.items() if key not in ("steps", "threads", "progress")
            for arg in (f"--{key}", str(value))]
    argv = ["--seeds", "0,1", "--configs", "grpo,token", "--steps", "2", "--workers", "2",
            "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "learning.md"), *tiny]
    out = learning.main(argv)
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith(("| grpo |", "| token |"))]
    assert len(rows) == 2 and all(" ± " in row and "/2 |" in row for row in rows)
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (tmp_path / "runs" / "token" / "seed1" / "summary.json").read_text()
    assert '"seed": 1' in summary
    assert learning.main(argv).read_text() == text  # finished runs are reused, not rerun
