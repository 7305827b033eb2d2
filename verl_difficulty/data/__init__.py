"""Data generation and loading helpers of verl-difficulty."""

from verl_difficulty.data.synthetic import (
    DATA_SOURCE_NAME,
    DEFAULT_SYSTEM_PROMPT,
    TASKS,
    generate_rows,
    make_spec,
    render,
    validate_row,
    write_dataset,
)

__all__ = [
    "DATA_SOURCE_NAME",
    "DEFAULT_SYSTEM_PROMPT",
    "TASKS",
    "generate_rows",
    "make_spec",
    "render",
    "validate_row",
    "write_dataset",
]
