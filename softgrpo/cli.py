"""The ``softgrpo`` command line.

    softgrpo train [--config NAME|FILE] [--resume] [--key value | --set key=value ...]
    softgrpo eval  [--model RUN|CHECKPOINT|PATH|HUB_ID] [--config NAME|FILE] [--samples N]
                   [--k 1,4,16,32] [--mode discrete,soft,soft-no-noise,greedy]
                   [--output FILE] [--key value ...]
    softgrpo plot  OUTPUT_DIR

``softgrpo train`` with neither --config nor --model runs the built-in default (the shipped
config "default": a synthetic task, a tiny local model, a short warm start, SofT-GRPO). With
--model and no --config, the published runs' settings apply (TrainConfig's defaults). Every
TrainConfig field is a setting (softgrpo/config.py lists them).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEFAULT_CONFIG = "default"
_ERRORS = (ValueError, TypeError, FileNotFoundError, FileExistsError, PermissionError, OSError,
           ImportError)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="softgrpo", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a policy with SofT-GRPO or GRPO",
                           epilog="any other --key value (or --set key=value) sets a TrainConfig "
                                  "field, e.g. --algorithm grpo --steps 50 --lr 1e-5")
    train.add_argument("--config", help="shipped config name (default, mnns, r1-distill-qwen-1.5b) "
                                        "or a YAML file")
    train.add_argument("--resume", action="store_true",
                       help="continue from output_dir's latest checkpoint")
    ev = sub.add_parser("eval", help="Pass@k of a model or checkpoint in each decoding mode",
                        epilog="any other --key value sets a TrainConfig field (rollout settings, "
                               "dataset, eval_dataset, eval_problems, temperature, seed, ...)")
    ev.add_argument("--config", help="shipped config name or YAML file (default: the "
                                     "checkpoint's own config)")
    ev.add_argument("--samples", type=int, help="samples per problem (eval_samples)")
    ev.add_argument("--k", help="comma-separated k values for Pass@k (eval_ks; default 1, 4, "
                                "16, 32 up to the samples)")
    ev.add_argument("--mode", help="comma-separated decoding modes from discrete, soft, "
                                   "soft-no-noise, greedy (default: the config's eval_modes, "
                                   "the run's own first)")
    ev.add_argument("--output", help="JSON file for the results (default "
                                     "<model dir>/eval.json, or ./eval.json for a hub id)")
    pl = sub.add_parser("plot", help="draw reward and thinking length against step")
    pl.add_argument("output_dir")
    return parser


def _quiet(progress: bool) -> None:
    """Without progress bars, also silence transformers' own (weight loading and saving)."""
    if not progress:
        from transformers.utils import logging

        logging.disable_progress_bar()


def _train(args, rest: list[str]) -> None:
    from softgrpo.config import load_config, parse_overrides
    from softgrpo.trainer import train

    overrides = parse_overrides(rest)
    name = args.config or (None if "model" in overrides else DEFAULT_CONFIG)
    cfg = load_config(name, overrides)
    _quiet(cfg.progress)
    train(cfg, resume=args.resume)


def _eval(args, rest: list[str]) -> None:
    import torch

    from softgrpo import checkpoint
    from softgrpo.components import (
        RewardScorer,
        autocast,
        compute_dtype,
        device_of,
        load_pretrained,
        problems,
        reward_function,
        rollout_backend,
    )
    from softgrpo.config import BUILTIN_TASKS, load_config, parse_overrides
    from softgrpo.evaluate import evaluate_modes, table

    overrides = parse_overrides(rest)
    for key, value in (("eval_samples", args.samples), ("eval_ks", args.k),
                       ("eval_modes", args.mode)):
        if value is not None:
            overrides[key] = value
    target = overrides.pop("model", None)
    if target is None:
        raise ValueError("softgrpo eval needs --model (a run's output_dir, a checkpoint, a "
                         "model directory or a hub id)")
    model_path, saved = target, None
    try:
        ckpt = checkpoint.resolve(target)
    except FileNotFoundError:
        ckpt = None
    if ckpt is not None:
        model_path, saved = ckpt / "model", checkpoint.load_state(ckpt)["config"]
    if args.config or saved is None:
        cfg = load_config(args.config, {"model": str(model_path), **overrides})
    else:
        cfg = load_config(None, overrides, base=saved)
    if cfg.dataset not in BUILTIN_TASKS and cfg.eval_dataset is None:
        cfg.eval_dataset = cfg.dataset  # a plain dataset file is evaluated whole
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    _quiet(cfg.progress)
    device = device_of(cfg)
    dtype = compute_dtype(cfg, device)
    model, tokenizer = load_pretrained(model_path, device, trainable=False, dtype=dtype)
    _, held_out = problems(cfg, tokenizer)
    if not held_out:
        raise ValueError("nothing to evaluate: pass --dataset or --eval_dataset")
    modes = ([m.strip() for m in args.mode.split(",")] if args.mode
             else cfg.eval_mode_list())
    backend = rollout_backend(cfg.backend, model, tokenizer, progress=cfg.progress)
    with torch.no_grad(), autocast(device, dtype):
        results = evaluate_modes(
            backend, held_out, RewardScorer(reward_function(cfg.reward)), cfg, modes,
            think_end=tokenizer.encode(cfg.think_end, add_special_tokens=False),
            progress=cfg.progress)
    print(f"{target}: {len(held_out)} problems x {cfg.eval_samples} samples")
    print(table(results, "mode"))
    local = Path(str(model_path)).is_dir()
    output = Path(args.output) if args.output else (
        (ckpt or Path(str(model_path))) / "eval.json" if local else Path("eval.json"))
    output.write_text(json.dumps({"model": str(target), "modes": results}, indent=2))
    print(f"saved {output}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``softgrpo`` console script; returns the exit status."""
    args, rest = _parser().parse_known_args(argv)
    try:
        if args.command == "train":
            _train(args, rest)
        elif args.command == "eval":
            _eval(args, rest)
        else:
            if rest:
                raise ValueError(f"unexpected arguments {rest}")
            from softgrpo.metrics import plot

            print(plot(args.output_dir))
    except _ERRORS as err:
        print(f"softgrpo {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
