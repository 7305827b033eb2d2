"""P4 RAP (arXiv 2506.04755): the MM-Eureka dataset as released -> verl parquet (train.parquet, val.parquet).

RAP selects from MM-Eureka (54,931 samples). The release (FanqingM/MM-Eureka-Dataset) is a jsonl file,
dataset.jsonl, plus image folders that unzip from K12.zip and MMPR.zip beside it (K12/<hash>.png,
MMPR/images/<source>/...). One line per sample:

  {"id": ..., "conversations": [{"role": "user", "content": "..."}, ...], "answer": "...",
   "image_urls": ["K12/<hash>.png"]}

The MM-Eureka code documents the same record with `message` instead of `conversations`: a JSON string of chat
messages whose content is a list of parts ({"type": "image", "image": "file:///path"}, {"type": "text", ...});
both are read (a `conversations` given as a string is parsed as JSON too). Only the user turns are kept; system
turns and MM-Eureka's own R1-style instruction (removed where it appears verbatim) give way to the instruction below.
Image paths resolve against the jsonl's directory and --image-root, also with their leading directories removed
(released paths may keep the absolute prefix of the machine they were made on). Neither file format nor path
layout could be checked against a downloaded copy here: they come from the MM-Eureka and RAP repositories and from
third-party loaders of the release.

Rows: the question (one <image> per image, prepended when it has none) plus the instruction, the answer as the
ground truth of the math_acc_format reward (reasoning in <think></think>, answer in \\boxed{}), ability "math".
extra_info.index = the record's number in dataset.jsonl (0-based, blank lines not counted; stable run to run),
the release's id in extra_info.source_id. MM-Eureka has no validation split: val.parquet is a seeded held-out slice
of --val-size records (removed from train). Bad records are skipped and counted; see prepare_summary.json.

  python prepare_data.py --source /data/MM-Eureka-Dataset --output data/mm_eureka
"""

from __future__ import annotations

import json
import os
import sys

from verl_difficulty.data import convert

# RAP's official training script (examples/qwen2_5_vl_7b_mmeureka_grpo.sh, FORMAT_PROMPT, built on EasyR1, which
# appends it to the problem after a space). It asks for the format the math_acc_format reward grades: reasoning in
# <think></think>, final answer in \boxed{}.
INSTRUCTION = (
    "You FIRST think about the reasoning process as an internal monologue and then provide the final answer.\n"
    r" The reasoning process MUST BE enclosed within <think> </think> tags. The final answer MUST BE put in \boxed{}."
)
# MM-Eureka's R1-style instruction (<answer></answer>, not \boxed{}), as a third-party verl preprocessing of the
# release adds it to questions that lack its first sentence (so some released questions carry that sentence);
# removed where it appears verbatim so that only one instruction remains.
MM_EUREKA_INSTRUCTIONS = (
    r"You should first thinks about the reasoning process in the mind and then provides the user with the answer. "
    r"Your answer must be in latex format and wrapped in $...$.The reasoning process and answer are enclosed within "
    r"<think> </think> and <answer> </answer> tags, respectively, i.e., <think> Since $1+1=2$, so the answer is $2$. "
    r"</think><answer> $2$ </answer>, which means your output should start with <think> and end with </answer>.",
    "You should first thinks about the reasoning process in the mind and then provides the user with the answer.",
)
SPEC = convert.RowSpec(data_source="FanqingM/MM-Eureka-Dataset", style=convert.PromptStyle(instruction=INSTRUCTION))


def read_mm_eureka(raw: dict) -> convert.SourceRecord:
    """One dataset.jsonl record (see the module docstring)."""
    chat = next((raw[k] for k in ("conversations", "message", "messages") if raw.get(k) is not None), None)
    if isinstance(chat, str):
        try:
            chat = json.loads(chat)
        except ValueError:
            chat = [{"role": "user", "content": chat}]
    question, part_images = convert.chat_question(chat)
    for text in MM_EUREKA_INSTRUCTIONS:
        question = question.replace(text, "")
    images = raw.get("image_urls") or raw.get("images") or part_images
    return convert.SourceRecord(question=question.strip(), answer=raw.get("answer"), images=images,
                                source_id=raw.get("id"))


def make_job(args) -> convert.Job:
    source = args.source
    if os.path.isdir(source) and os.path.isfile(os.path.join(source, "dataset.jsonl")):
        source = os.path.join(source, "dataset.jsonl")
    splits = convert.open_source(source, "jsonl", args.image_root)
    return convert.Job("p4_rap", splits, read_mm_eureka, SPEC, train_split="train", val_split=None)


def main(argv=None) -> int:
    parser = convert.build_parser(
        __doc__,
        source_help="MM-Eureka as released: the directory holding dataset.jsonl and the unzipped K12/ and MMPR/ "
                    "image folders, or the jsonl file itself",
        val_help=f"records held out (seeded) for val.parquet (default {convert.DEFAULT_VAL_SIZE})")
    return convert.cli(parser, make_job, argv)


if __name__ == "__main__":
    sys.exit(main())
