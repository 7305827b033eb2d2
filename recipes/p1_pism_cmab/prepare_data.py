"""P1 PISM + CMAB (arXiv 2511.06722): the paper's training pool as released -> verl parquet (train/val.parquet).

The official repository (qijianyu277/DifficultySampling) ships scripts, not data: its pool comes from V-Triune's
Orsta data ("One RL to See Them All", arXiv 2505.18129) and is fed to the PISM/CMAB scripts as jsonl. The formats
below are the ones those scripts read and write (--format auto picks one from the first record):

* pool: the PISM/CMAB input, one JSON object per line:
    {"id": ..., "ability": "math" | "ocr" | "counting" | "cv_grounding" | ..., "prompt": "<image>question",
     "ground_truth": "...", "image_paths": ["/path/to/image.png"]}
* swift: the official GRPO training files (ms-swift), also what its conversion scripts write after selection:
    {"images": ["/path/to/image.png"], "messages": [{"role": "user", "content": "<image>\\nquestion"}],
     "solution": "\\\\boxed{answer}"}
* verl: verl-style parquet rows (data_source, images, prompt messages, ability, reward_model.ground_truth), the
  layout of the Orsta-Data-47k release (data/train-*.parquet, data/test-*.parquet; its prompt text is kept, minus
  system turns).
* geometry3k: the Hugging Face layout images / problem / answer (hiyouga/geometry3k), for a math-only run.

Image paths resolve against the source's directory and --image-root (also with leading directories removed).
Ground truths are carried as written (the r1v_acc reward reads plain, \\boxed{} and <answer></answer> ones).
The pool's `ability` sets extra_info.task_type for the perception reward (cv_grounding/cv_detection -> bbox, ocr
-> ocr, counting -> count, anything else -> math). No sample of the pool itself is published, so the field names
come from the official scripts, not from a downloaded file.

Rows: the official system prompt of the chosen task (--task vrt: visual reasoning, vpt: visual perception; reasoning
in <think></think>, answer in <answer></answer>, as the r1v_acc reward expects) and the question as the user turn.
extra_info.index = the record's number in the jsonl (0-based; per split for parquet, test rows + 2e8): stable
run to run.
val.parquet: the source's test split when it has one, else a seeded held-out slice of --val-size records.

  python prepare_data.py --source pool.jsonl --output data/p1_vrt --task vrt
"""

from __future__ import annotations

import sys

from verl_difficulty.data import convert

# The system prompts of the official GRPO scripts (qijianyu277/DifficultySampling, PISM/VRT/*.sh and
# CMAB/GRPO/VPT/*.sh, ms-swift `--system`), verbatim.
SYSTEM_PROMPTS = {
    "vrt": "You are a helpful assistant specialized in visual reasoning tasks. Always begin by thinking through the "
           "problem step-by-step and explain your reasoning clearly inside <think> and </think> tags. Then, present "
           "your final answer strictly within <answer> and </answer> tags. Do not include any other text outside "
           "these tags.",
    "vpt": "You are a helpful assistant specialized in visual perception tasks. Always begin by thinking through the "
           "problem step-by-step and explain your reasoning clearly inside <think> and </think> tags. Then, present "
           "your final answer strictly within <answer> and </answer> tags. Do not include any other text outside "
           "these tags.",
}
ORSTA = "One-RL-to-See-Them-All/Orsta-Data-47k"
FORMATS = ("pool", "swift", "verl", "geometry3k")


def task_type(ability) -> str:
    """The perception reward's task type of a V-Triune ability."""
    a = str(ability or "").lower()
    if "grounding" in a or "detection" in a:
        return "bbox"
    if "ocr" in a:
        return "ocr"
    if "count" in a:
        return "count"
    return "math"


def read_pool(raw: dict) -> convert.SourceRecord:
    ability = raw.get("ability") or None
    return convert.SourceRecord(question=raw.get("prompt"), answer=raw.get("ground_truth"),
                                images=raw.get("image_paths"), source_id=raw.get("id"), ability=ability,
                                task_type=task_type(ability))


def read_swift(raw: dict) -> convert.SourceRecord:
    question, part_images = convert.chat_question(raw.get("messages"))
    return convert.SourceRecord(question=question, answer=raw.get("solution"),
                                images=raw.get("images") or part_images, source_id=raw.get("id"))


def read_verl(raw: dict) -> convert.SourceRecord:
    question, part_images = convert.chat_question(raw.get("prompt"))
    reward, extra = raw.get("reward_model") or {}, raw.get("extra_info") or {}
    ability = raw.get("ability") or None
    return convert.SourceRecord(question=question, answer=reward.get("ground_truth"),
                                images=raw.get("images") or part_images, ability=ability,
                                source_id=extra.get("id", extra.get("index")), task_type=task_type(ability),
                                data_source=raw.get("data_source") or None)


READERS = {"pool": read_pool, "swift": read_swift, "verl": read_verl, "geometry3k": convert.read_problem_answer}


def detect(first: dict) -> str:
    """The format of a source from its first record (SourceError if none fits)."""
    keys = set(first or {})
    if "ground_truth" in keys and ({"prompt", "image_paths"} & keys):
        return "pool"
    if {"messages", "solution"} <= keys:
        return "swift"
    if {"prompt", "reward_model"} <= keys:
        return "verl"
    if {"problem", "answer"} <= keys:
        return "geometry3k"
    raise convert.SourceError(f"cannot tell the format from the fields {sorted(keys)}: pass --format")


def make_job(args) -> convert.Job:
    try:
        splits = convert.open_source(args.source, "jsonl", args.image_root)
    except convert.SourceError:
        splits = convert.open_source(args.source, "parquet", args.image_root)
    fmt = detect(splits.first("train")) if args.format == "auto" else args.format
    print(f"[p1_pism_cmab] format: {fmt}")
    data_source = args.data_source or ("hiyouga/geometry3k" if fmt == "geometry3k" else ORSTA)
    spec = convert.RowSpec(data_source=data_source, style=convert.PromptStyle(system_prompt=SYSTEM_PROMPTS[args.task]))
    val_split = "test" if isinstance(splits, (convert.ParquetSplits, convert.HubSplits)) else None
    return convert.Job("p1_pism_cmab", splits, READERS[fmt], spec, train_split="train", val_split=val_split)


def main(argv=None) -> int:
    parser = convert.build_parser(
        __doc__,
        source_help="the training pool: a jsonl file (pool or swift format) or a directory of them, or a parquet "
                    "source (verl-style rows such as Orsta-Data-47k, or Geometry3K), local or a dataset id",
        val_help=f"with a test split: keep a seeded sample of N of its rows; without: records held out for "
                 f"val.parquet (default {convert.DEFAULT_VAL_SIZE})")
    parser.add_argument("--format", choices=("auto", *FORMATS), default="auto",
                        help="source format (default auto: from the fields of the first record)")
    parser.add_argument("--task", choices=tuple(SYSTEM_PROMPTS), default="vrt",
                        help="system prompt of the official scripts: vrt (visual reasoning, default) or vpt "
                             "(visual perception)")
    parser.add_argument("--data-source", default=None,
                        help=f"data_source of the rows that carry none (default {ORSTA}; hiyouga/geometry3k for "
                             "Geometry3K)")
    return convert.cli(parser, make_job, argv)


if __name__ == "__main__":
    sys.exit(main())
