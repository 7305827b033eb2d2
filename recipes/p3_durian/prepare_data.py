"""P3 Durian (arXiv 2602.21743): Geometry3K as released -> verl parquet (train.parquet, val.parquet).

Reads Geometry3K in its Hugging Face release (hiyouga/geometry3k): parquet files data/train-*.parquet (2,101 rows),
data/validation-*.parquet (300) and data/test-*.parquet (601), columns `images` (a list of {bytes, path} images),
`problem` (the question, starting with its <image> placeholder) and `answer`. --source is a local copy of that
repository (or one of its parquet files), or the dataset id itself when `datasets` can load it (cache or network).

Rows: the question plus the instruction below in the user turn, the answer as the ground truth of the
math_acc_format reward (0.9 accuracy + 0.1 format: <think>...</think> then \\boxed{}), ability "math",
extra_info.index = the row number in its split (validation rows + 1e8, test rows + 2e8: stable run to run).
val.parquet is the source's test split by default (as verl's Geometry3K example), --val-split validation for the
other one. Bad records are skipped and counted; the summary is printed and written to prepare_summary.json.

  python prepare_data.py --source hiyouga/geometry3k --output data/geometry3k
"""

from __future__ import annotations

import sys

from verl_difficulty.data import convert

# The instruction of verl's Geometry3K example (examples/data_preprocess/geo3k.py, appended to the problem after a
# space) and of EasyR1's Geometry3K recipe; the Durian paper does not print its prompt. It asks for the format the
# math_acc_format reward grades: reasoning in <think></think>, final answer in \boxed{}.
INSTRUCTION = (
    r"You FIRST think about the reasoning process as an internal monologue and then provide the final answer. "
    r"The reasoning process MUST BE enclosed within <think> </think> tags. The final answer MUST BE put in \boxed{}."
)
SPEC = convert.RowSpec(data_source="hiyouga/geometry3k", style=convert.PromptStyle(instruction=INSTRUCTION))


def make_job(args) -> convert.Job:
    splits = convert.open_source(args.source, "parquet", args.image_root)
    return convert.Job("p3_durian", splits, convert.read_problem_answer, SPEC, train_split="train",
                       val_split=args.val_split)


def main(argv=None) -> int:
    parser = convert.build_parser(
        __doc__,
        source_help="Geometry3K as released: a local copy of hiyouga/geometry3k (directory or parquet file) or the "
                    "dataset id (needs the datasets cache or network)",
        val_help="keep a seeded sample of N rows of the validation split (default: the whole split)")
    parser.add_argument("--val-split", choices=("test", "validation"), default="test",
                        help="source split written as val.parquet (default test, as verl's Geometry3K example)")
    return convert.cli(parser, make_job, argv)


if __name__ == "__main__":
    sys.exit(main())
