"""``verl-difficulty tiny-model``: build the tiny random Qwen2.5-VL (:mod:`verl_difficulty.models.tiny`)."""

from __future__ import annotations


def _run(args) -> int:
    from verl_difficulty.models.tiny import build_tiny_model_dir

    print(build_tiny_model_dir(args.out, seed=args.seed))
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("tiny-model", help="build a tiny random Qwen2.5-VL (model, tokenizer, processor) in a directory")
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=_run)
