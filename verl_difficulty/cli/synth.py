"""``verl-difficulty synth``: write the synthetic dataset with known difficulty (:mod:`verl_difficulty.data.synthetic`)."""

from __future__ import annotations


def _run(args) -> int:
    from verl_difficulty.data.synthetic import write_dataset

    paths = write_dataset(args.out, n_train=args.n_train, n_val=args.n_val, seed=args.seed)
    for split, path in paths.items():
        print(f"{split}: {path}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("synth", help="write the synthetic multimodal dataset (known difficulty) as verl parquet")
    p.add_argument("out")
    p.add_argument("--n-train", type=int, default=256)
    p.add_argument("--n-val", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=_run)
