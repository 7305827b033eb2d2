"""Settings of the plugin's rewards (:class:`RewardSettings`), the defaults of each manager, and where they are read.

Where the managers read them, later wins: the defaults of the manager (:data:`MANAGER_DEFAULTS`), the plugin section
``difficulty.reward`` of the trainer config, then verl's ``reward.reward_kwargs`` (the dict verl's DAPO manager reads
too). In each, flat keys apply to every manager and a sub-dict named after a manager
(``reward.reward_kwargs.math_acc_format.acc_weight=0.8``) to that one only. The functions take the same keys as
keyword arguments (``reward.custom_reward_function.reward_kwargs``), the offline scorers' verifier as
``--reward-kwargs``.

Every mapping is parsed strictly with :func:`verl_difficulty.config.parse`: an unknown key, a value of the wrong type
(``"yes"`` is not true/false, ``"0.5"`` is not a number) or out of bounds is a
:class:`~verl_difficulty.config.ConfigError` naming the full dotted key
(``difficulty.reward.math_acc_format.acc_wieght``), also in the sub-dict of a manager that is not the one being
built. The only keys allowed besides the settings: the per-manager sub-dicts, and in ``reward.reward_kwargs`` the keys
verl's DAPO manager reads from it (:data:`VERL_REWARD_KWARGS`, ignored here).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Optional

from verl_difficulty.config import ConfigError, parse, setting, to_plain
from verl_difficulty.rewards.extract import ANSWER_CLOSE, ANSWER_OPEN, FORMAT_STYLES, THINK_CLOSE, THINK_OPEN
from verl_difficulty.rewards.pool import (
    DEFAULT_MAX_CHARS,
    DEFAULT_MAX_MEMORY_MB,
    DEFAULT_NUM_PROCS,
    DEFAULT_TIMEOUT_S,
    GRADER_MODES,
)

MANAGER_NAMES = ("math_acc_format", "r1v_acc", "perception")
"""The plugin's rewards: registered reward managers and compute_score functions of the same names."""
VERL_REWARD_KWARGS = ("overlong_buffer_cfg", "max_resp_len")
"""Keys verl's DAPO reward manager reads from ``reward.reward_kwargs``: allowed there, ignored by the plugin."""
TAG_FIELDS = ("think_open", "think_close", "answer_open", "answer_close")


@dataclass(frozen=True)
class RewardFields:
    """The reward settings one mapping may set (each optional), checked key by key; see :class:`RewardSettings`."""

    acc_weight: float = setting(
        1.0, ge=0.0, source="P1 (r1v_acc, perception); math_acc_format: 0.9 (P3/P4)",
        help="reward = acc_weight * task score + format_weight * format.")
    format_weight: float = setting(
        0.0, ge=0.0, source="P1 (r1v_acc, perception); math_acc_format: 0.1 (P3/P4)",
        help="weight of the format score (0/1) in the reward.")
    format_style: str = setting(
        "think_answer", choices=FORMAT_STYLES, source="P1 (r1v_acc, perception); math_acc_format: think_boxed (P3/P4)",
        help="format rule: think_boxed (<think>...</think> then \\boxed{}), think_answer (<think>...</think> "
             "<answer>...</answer>), boxed, answer, none (format always 0).")
    think_open: str = setting(THINK_OPEN, source="P1, P3/P4", help="tag opening the reasoning.")
    think_close: str = setting(THINK_CLOSE, source="P1, P3/P4", help="tag closing the reasoning.")
    answer_open: str = setting(ANSWER_OPEN, source="P1", help="tag opening the answer.")
    answer_close: str = setting(ANSWER_CLOSE, source="P1", help="tag closing the answer.")
    require_think_open: bool = setting(
        True, help="the response must start with think_open; false when the chat template already puts it in the "
                   "prompt (the response starts inside the reasoning).")
    require_reasoning: bool = setting(True, help="the think block must contain non-blank text.")
    require_boxed: bool = setting(
        False, source="ours; math_acc_format: true (P3/P4's \\boxed{} answer)",
        help="math accuracy only from the last \\boxed{} (true); else the answer tag and the text after the "
             "reasoning are fallbacks.")
    iou_threshold: float = setting(0.2, gt=0.0, le=1.0, source="P1", help="bbox: a box matches at IoU >= this.")
    ocr_threshold: float = setting(
        0.5, ge=0.0, le=1.0, source="P1",
        help="ocr: correct at normalised similarity (2 * LCS / total length, perception.ocr_similarity) >= this.")
    max_chars: int = setting(
        DEFAULT_MAX_CHARS, ge=0,
        help="responses are cut to their last max_chars characters before grading accuracy (the format sees all of "
             "it); 0: no cut.")
    timeout_s: float = setting(
        DEFAULT_TIMEOUT_S, gt=0.0,
        help="hard time limit of one grading call (the grader subprocess is killed and replaced on timeout).")
    num_procs: int = setting(DEFAULT_NUM_PROCS, ge=1, help="grader subprocesses per process (per reward worker).")
    max_memory_mb: int = setting(
        DEFAULT_MAX_MEMORY_MB, ge=0, help="address-space limit of a grader subprocess in MiB; 0: no limit.")
    grader_mode: str = setting(
        "subprocess", choices=GRADER_MODES,
        help="subprocess (hard time limit) or inline (no time limit: hostile output can hang; debugging only).")

    def check(self, where: str) -> None:
        """Rules of single settings that :func:`~verl_difficulty.config.setting` cannot say."""
        for name in TAG_FIELDS:
            if not getattr(self, name).strip():
                raise ConfigError(f"{where}.{name}: must be a non-empty tag, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class RewardSettings(RewardFields):
    """The resolved settings of one reward (all fields of :class:`RewardFields`), with the cross-field checks."""

    def check(self, where: str) -> None:
        super().check(where)
        for a, b in (("think_open", "think_close"), ("answer_open", "answer_close")):
            if getattr(self, a) == getattr(self, b):
                raise ConfigError(f"{where}: {a} and {b} are both {getattr(self, a)!r}; the tags of a pair must differ")
        if self.acc_weight == 0 and self.format_weight == 0:
            raise ConfigError(f"{where}: acc_weight and format_weight are both 0, so every reward would be 0; "
                              "set at least one of them > 0")
        if self.format_weight > 0 and self.format_style == "none":
            raise ConfigError(f"{where}: format_weight is {self.format_weight} but format_style is 'none' (the format "
                              f"score is always 0); set format_weight=0 or format_style to one of "
                              f"{[s for s in FORMAT_STYLES if s != 'none']}")

    def grader_kwargs(self) -> dict:
        """Arguments of :func:`verl_difficulty.rewards.pool.shared_grader`."""
        return dict(timeout_s=self.timeout_s, max_chars=self.max_chars, num_procs=self.num_procs,
                    max_memory_mb=self.max_memory_mb, mode=self.grader_mode)

    def format_opts(self) -> dict:
        """Arguments of :func:`verl_difficulty.rewards.extract.check_format`."""
        return dict(think_open=self.think_open, think_close=self.think_close, answer_open=self.answer_open,
                    answer_close=self.answer_close, require_think_open=self.require_think_open,
                    require_reasoning=self.require_reasoning)

    @property
    def answer_tags(self) -> tuple[str, str]:
        return (self.answer_open, self.answer_close)


MANAGER_DEFAULTS: dict[str, dict] = {
    "math_acc_format": dict(acc_weight=0.9, format_weight=0.1, format_style="think_boxed", require_boxed=True),
    "r1v_acc": dict(acc_weight=1.0, format_weight=0.0, format_style="think_answer"),
    "perception": dict(acc_weight=1.0, format_weight=0.0, format_style="think_answer"),
}
"""Each reward's defaults where they differ from :class:`RewardFields`' (sources there)."""


# --------------------------------------------------------------------------------------------------------------------
# Layered, strict resolution
# --------------------------------------------------------------------------------------------------------------------
def _parse_layer(value: Any, where: str) -> dict:
    """The settings one mapping sets, each checked (unknown key, type, bounds, choices: errors name ``where.key``)."""
    parsed = parse(RewardFields, value, where)
    given = to_plain(value) or {}
    return {f.name: getattr(parsed, f.name) for f in fields(RewardFields) if f.name in given}


def _layers(manager: str, source: Any, where: str, ignore: Iterable[str] = ()) -> list[tuple[str, dict]]:
    """``[(where, flat settings), (where.manager, the manager's sub-dict)]`` of one source; the sub-dicts of the other
    managers are checked too (a typo there is an error whichever reward is built)."""
    source = to_plain(source)
    if source is None:
        return []
    if not isinstance(source, Mapping):
        raise ConfigError(f"{where}: expected a mapping of reward settings, got {type(source).__name__} {source!r}")
    ignore = set(ignore)
    flat = {k: v for k, v in source.items() if k not in MANAGER_NAMES and k not in ignore}
    out = [(where, _parse_layer(flat, where))]
    for name in MANAGER_NAMES:
        if name in source:
            sub = _parse_layer(source[name], f"{where}.{name}")
            if name == manager:
                out.append((f"{where}.{name}", sub))
    return out


def resolve_layers(manager: str, sources: Iterable[tuple[str, Any, Iterable[str]]]) -> RewardSettings:
    """Settings of reward ``manager``: its defaults, then each source ``(where, mapping, ignored keys)`` in order (flat
    keys, then the sub-dict named ``manager``). Raises :class:`~verl_difficulty.config.ConfigError`."""
    if manager not in MANAGER_DEFAULTS:
        raise ConfigError(f"unknown reward {manager!r}; expected one of {list(MANAGER_NAMES)}")
    values = dict(MANAGER_DEFAULTS[manager])
    used = []
    for where, source, ignore in sources:
        for layer_where, layer in _layers(manager, source, where, ignore):
            values.update(layer)
            if layer:
                used.append(layer_where)
    settings = RewardSettings(**values)
    settings.check(f"{manager} reward settings ({', '.join(used) or 'defaults'})")
    return settings


def resolve_settings(manager: str, settings: Optional[Mapping] = None, where: str = "reward_kwargs") -> RewardSettings:
    """Settings of reward ``manager`` from one mapping named ``where`` (flat keys and per-manager sub-dicts)."""
    return resolve_layers(manager, [(where, settings, ())])


def _select(config: Any, path: str) -> Any:
    node = config
    for part in path.split("."):
        if node is None:
            return None
        try:
            node = node.get(part) if hasattr(node, "get") else getattr(node, part, None)
        except Exception:  # noqa: BLE001 - struct configs, missing keys
            return None
    return node


def settings_from_config(config: Any, manager: str) -> RewardSettings:
    """Settings of a manager from the trainer config: ``difficulty.reward`` then ``reward.reward_kwargs``."""
    return resolve_layers(manager, [
        ("difficulty.reward", _select(config, "difficulty.reward"), ()),
        ("reward.reward_kwargs", _select(config, "reward.reward_kwargs"), VERL_REWARD_KWARGS),
    ])


__all__ = [
    "MANAGER_NAMES",
    "VERL_REWARD_KWARGS",
    "RewardFields",
    "RewardSettings",
    "MANAGER_DEFAULTS",
    "resolve_layers",
    "resolve_settings",
    "settings_from_config",
]
