"""verl's ``RLHFDataset`` with the P2 difficulty hint, installed through verl's ``data.custom_cls`` hook.

The rule (which rows, what text, where) is :class:`verl_difficulty.sampling.hints.HintRule`; this module only mixes
it into verl's dataset class (``_build_messages``, ``verl/utils/dataset/rl_dataset.py:299-411``) and points the data
config at it. The class is built lazily so that importing this module does not import verl's dataset stack.
"""

from __future__ import annotations

from typing import Any

from verl_difficulty.sampling.config import HintConfig
from verl_difficulty.sampling.hints import HintRule

HINT_DATASET_PATH = "pkg://verl_difficulty.seam.hint_dataset"
HINT_DATASET_NAME = "DifficultyHintDataset"

__all__ = ["HintConfig", "HINT_DATASET_PATH", "HINT_DATASET_NAME", "install_hint_dataset", "configure_dataset_hints"]


def _make_class():
    from verl.utils.dataset.rl_dataset import RLHFDataset

    class DifficultyHintDataset(HintRule, RLHFDataset):
        """verl's ``RLHFDataset`` that adds the P2 difficulty hint to selected rows."""

        def _build_messages(self, example: dict, key: str):
            self.apply_hint(example, key)
            return super()._build_messages(example, key)

    DifficultyHintDataset.__module__ = __name__
    DifficultyHintDataset.__qualname__ = HINT_DATASET_NAME
    return DifficultyHintDataset


def __getattr__(name: str):
    if name == HINT_DATASET_NAME:
        cls = _make_class()
        globals()[name] = cls
        return cls
    raise AttributeError(name)


def install_hint_dataset(data_config) -> None:
    """Point verl's ``data.custom_cls`` at ``DifficultyHintDataset`` unless the user set their own class."""
    from omegaconf import open_dict

    custom = data_config.get("custom_cls", None)
    if custom is not None and custom.get("path", None):
        return  # checked after construction by configure_dataset_hints
    with open_dict(data_config):
        data_config.custom_cls = {"path": HINT_DATASET_PATH, "name": HINT_DATASET_NAME}


def configure_dataset_hints(dataset, cfg: HintConfig, split: str, sampler: Any = None) -> None:
    """Configure hints on a dataset verl built; a clear error if it is not a hint dataset."""
    if not isinstance(dataset, HintRule):
        raise TypeError(
            f"difficulty.hints.enable=true but the {split} dataset is {type(dataset).__name__}: with your own "
            f"data.custom_cls, subclass {__name__}.{HINT_DATASET_NAME} (or unset data.custom_cls)"
        )
    dataset.configure_hints(cfg, split=split, sampler=sampler)
