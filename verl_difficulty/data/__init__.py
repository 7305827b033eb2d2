"""Data of verl-difficulty: verl rows (:mod:`.rows`: columns, validation, chat messages), parquet I/O (:mod:`.io`),
the synthetic dataset with known difficulty (:mod:`.synthetic`) and its oracle buckets (:mod:`.true_buckets`)."""

from verl_difficulty.data.rows import build_messages, prepare_row, validate_row
from verl_difficulty.data.synthetic import (
    DATA_SOURCE_NAME,
    DEFAULT_SYSTEM_PROMPT,
    TASKS,
    generate_rows,
    make_spec,
    render,
    write_dataset,
)

__all__ = [
    "DATA_SOURCE_NAME",
    "DEFAULT_SYSTEM_PROMPT",
    "TASKS",
    "build_messages",
    "generate_rows",
    "make_spec",
    "prepare_row",
    "render",
    "validate_row",
    "write_dataset",
]
