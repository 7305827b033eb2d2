"""P2 difficulty prior (arXiv 2505.13261): Geometry3K or K12-freeform as released -> verl parquet.

The paper trains on "Geometry3K and K12-freeform". Both are read in their Hugging Face releases, which share one
layout: parquet files data/<split>-*.parquet with columns `images` (a list of {bytes, path} images), `problem` (the
question with its <image> placeholder) and `answer`.

* geometry3k: hiyouga/geometry3k, splits train (2,101), validation (300), test (601).
* k12: xyliu6/k12-freeform, the free-form-answer K12 set of MM-Eureka as released by NoisyRollout (EasyR1 scripts:
  `xyliu6/k12-freeform@mini_train` for training, `@test` for validation), splits train, mini_train (2,100) and test
  (808). The paper names the set but not its release or split; this script assumes that release and trains on its
  `train` split by default (--train-split mini_train for NoisyRollout's 2.1K subset).

--dataset auto picks the dataset from the source's name (geometry3k / geo3k / k12) or, for a local copy, from its
splits (a mini_train split means k12, a validation split geometry3k). --source is a local copy (directory or
parquet file) or the dataset id when `datasets` can load it.

Rows: the question plus the instruction below in the user turn, the answer as the ground truth of the
math_acc_format reward (reasoning in <think></think>, answer in \\boxed{}), ability "math". extra_info.index = the row
number in its split (+1e8 per split: validation 1, test 2, mini_train 3) plus 1e12 for k12 rows, so the two datasets
never share an id when their outputs are mixed. val.parquet is the source's test split (--val-split to change it).
The difficulty hint of the second stage is not part of the data: the plugin adds it at training time.

  python prepare_data.py --source hiyouga/geometry3k --output data/p2_geometry3k
  python prepare_data.py --source xyliu6/k12-freeform --output data/p2_k12
"""

from __future__ import annotations

import os
import sys

from verl_difficulty.data import convert

# The instruction of verl's Geometry3K example (examples/data_preprocess/geo3k.py) and of the EasyR1 / NoisyRollout
# scripts that released K12-freeform (there as the system prompt); the P2 paper does not print its prompt. It asks
# for the format the math_acc_format reward grades: reasoning in <think></think>, final answer in \boxed{}.
INSTRUCTION = (
    r"You FIRST think about the reasoning process as an internal monologue and then provide the final answer. "
    r"The reasoning process MUST BE enclosed within <think> </think> tags. The final answer MUST BE put in \boxed{}."
)
STYLE = convert.PromptStyle(instruction=INSTRUCTION)
DATASETS = {
    "geometry3k": convert.RowSpec(data_source="hiyouga/geometry3k", style=STYLE, index_base=0),
    "k12": convert.RowSpec(data_source="xyliu6/k12-freeform", style=STYLE, index_base=1 * convert.DATASET_STRIDE),
}


def detect(source: str, splits: convert.Splits) -> str:
    """geometry3k or k12 from the source's name, else from its splits; SourceError when neither tells."""
    name = os.path.basename(os.path.normpath(source)).lower()
    for key, words in (("k12", ("k12",)), ("geometry3k", ("geometry3k", "geo3k"))):
        if any(w in name for w in words):
            return key
    names = set(splits.names())
    if "mini_train" in names:
        return "k12"
    if "validation" in names:
        return "geometry3k"
    raise convert.SourceError(f"cannot tell whether {source} is Geometry3K or K12-freeform: pass --dataset")


def make_job(args) -> convert.Job:
    splits = convert.open_source(args.source, "parquet", args.image_root)
    dataset = detect(args.source, splits) if args.dataset == "auto" else args.dataset
    print(f"[p2_difficulty_prior] dataset: {dataset}")
    return convert.Job("p2_difficulty_prior", splits, convert.read_problem_answer, DATASETS[dataset],
                       train_split=args.train_split, val_split=args.val_split)


def main(argv=None) -> int:
    parser = convert.build_parser(
        __doc__,
        source_help="Geometry3K (hiyouga/geometry3k) or K12-freeform (xyliu6/k12-freeform) as released: a local "
                    "copy (directory or parquet file) or the dataset id (needs the datasets cache or network)",
        val_help="keep a seeded sample of N rows of the validation split (default: the whole split)")
    parser.add_argument("--dataset", choices=("auto", *DATASETS), default="auto",
                        help="which dataset the source is (default auto: from its name or splits)")
    parser.add_argument("--train-split", default="train",
                        help="source split written as train.parquet (default train; k12: mini_train = NoisyRollout's "
                             "2.1K subset)")
    parser.add_argument("--val-split", default="test",
                        help="source split written as val.parquet (default test; geometry3k also has validation)")
    return convert.cli(parser, make_job, argv)


if __name__ == "__main__":
    sys.exit(main())
