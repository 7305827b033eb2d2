"""The one configuration mechanism of the plugin: typed dataclasses, parsed once, with dotted-key errors.

Every section the plugin reads from a verl config (``difficulty.*``, ``algorithm.difficulty.*``, the reward settings)
and every scorer's parameters are dataclasses whose fields are declared with :func:`setting`: the type comes from the
annotation, the default, the help text, the source of the default (a paper's value or "ours"), the allowed choices and
bounds from the call. :func:`parse` turns a mapping (a plain dict or an OmegaConf node) into such a dataclass:

* an unknown key is an error naming the full dotted key (``difficulty.sampler.band.hgih``) and listing the valid ones;
* a value of the wrong type is an error naming the key, the expected type and the value (``true`` is not a number,
  ``"0.5"`` is not a float, a string is not a list, ``[]`` is not a mapping);
* numbers must be finite and inside their bounds; a choice must be one of its choices;
* nested dataclasses are parsed recursively with the longer prefix;
* after the fields, the dataclass's own ``check(self, where)`` method (if any) runs the cross-field checks, in one
  place, raising :class:`ConfigError` with a message that says how to fix the setting.

:func:`defaults` gives the nested default mapping of a dataclass (what the shipped YAML files under this folder must
equal; a test holds them together) and :func:`describe` the documented fields (for ``--help`` texts and docs).

The YAML files beside this module are hydra config groups: recipes add ``pkg://verl_difficulty.config`` to their
search path and mount ``difficulty@difficulty`` and ``algorithm_difficulty@algorithm``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, Callable, Optional, Union

__all__ = ["ConfigError", "setting", "parse", "defaults", "describe", "to_plain", "Setting"]

_MISSING = dataclasses.MISSING


class ConfigError(ValueError):
    """A configuration value the plugin cannot use; the message names the full dotted key."""


def setting(
    default: Any = _MISSING,
    *,
    help: str,
    source: str = "ours",
    choices: Optional[tuple] = None,
    ge: Optional[float] = None,
    gt: Optional[float] = None,
    le: Optional[float] = None,
    lt: Optional[float] = None,
    default_factory: Optional[Callable[[], Any]] = None,
    cli: bool = True,
) -> Any:
    """A documented dataclass field.

    Args:
        default: the default value (use ``default_factory`` for lists and dicts).
        help: what the field does, one or two sentences (shown in ``--help`` and docs).
        source: where the default comes from: ``"P2"``, ``"P3 ablation row"``, ``"verl"``, ``"ours"`` ...
        choices: the allowed values (strings) of a choice field.
        ge, gt, le, lt: bounds of a number (or of every item of a list of numbers).
        default_factory: builds a mutable default.
        cli: whether a command line generated from the dataclass offers this field as a flag.
    """
    meta = {"help": help, "source": source, "choices": choices, "ge": ge, "gt": gt, "le": le, "lt": lt, "cli": cli}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class Setting:
    """One documented field of a config dataclass (see :func:`describe`)."""

    name: str
    type: Any
    default: Any
    help: str
    source: str
    choices: Optional[tuple]
    bounds: dict
    cli: bool


def to_plain(value: Any) -> Any:
    """OmegaConf containers (and verl's config dataclasses) -> plain Python containers; anything else unchanged."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, (DictConfig, ListConfig)):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    return value


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    if tp is bool:
        return "true/false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        return "a list"
    if origin is dict:
        return "a mapping"
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _bounds(meta: Mapping) -> dict:
    return {k: meta[k] for k in ("ge", "gt", "le", "lt") if meta.get(k) is not None}


def _check_bounds(key: str, value: float, meta: Mapping) -> None:
    b = _bounds(meta)
    bad = (
        ("ge" in b and not value >= b["ge"], f">= {b.get('ge')}"),
        ("gt" in b and not value > b["gt"], f"> {b.get('gt')}"),
        ("le" in b and not value <= b["le"], f"<= {b.get('le')}"),
        ("lt" in b and not value < b["lt"], f"< {b.get('lt')}"),
    )
    for failed, what in bad:
        if failed:
            raise ConfigError(f"{key}: must be {what}, got {value!r}")


def _convert(key: str, tp: Any, value: Any, meta: Mapping) -> Any:
    """``value`` checked and converted to annotation ``tp``; errors name ``key``."""
    value = to_plain(value)
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got null")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(key, arg, value, meta)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: expected {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return parse(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {type(value).__name__} {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer() and math.isfinite(value):
                value = int(value)
            else:
                raise ConfigError(f"{key}: expected an integer, got {type(value).__name__} {value!r}")
        _check_bounds(key, value, meta)
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {type(value).__name__} {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        _check_bounds(key, value, meta)
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {type(value).__name__} {value!r}")
        choices = meta.get("choices")
        if choices and value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {list(choices)}")
        return value
    if origin in (list, tuple):
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected a list of {len(args)} items, got {len(value)}: {value!r}")
            return tuple(_convert(f"{key}[{i}]", a, v, meta) for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        out = [_convert(f"{key}[{i}]", item, v, meta) for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        kt, vt = (typing.get_args(tp) + (Any, Any))[:2]
        return {_convert(f"{key}", kt, k, {}): _convert(f"{key}.{k}", vt, v, meta) for k, v in value.items()}
    if isinstance(tp, type):
        if not isinstance(value, tp):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
        return value
    return value


def parse(cls: type, value: Any, where: str):
    """Build config dataclass ``cls`` from ``value`` (a mapping, an OmegaConf node, an instance of ``cls`` or None).

    ``where`` is the dotted path of the section (``"difficulty.sampler"``); every error names ``where.key``.
    """
    if isinstance(value, cls):
        value = dataclasses.asdict(value)
    value = to_plain(value)
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping of settings, got {type(value).__name__} {value!r}")
    flds = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(str(k) for k in value if k not in flds)
    if unknown:
        keys = ", ".join(f"{where}.{k}" for k in unknown)
        raise ConfigError(f"unknown setting {keys}; valid keys under {where}: {sorted(flds)}")
    hints = _hints(cls)
    kwargs = {}
    for name, f in flds.items():
        if name in value:
            kwargs[name] = _convert(f"{where}.{name}", hints[name], value[name], f.metadata)
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if callable(check):
        check(where)
    return obj


def defaults(cls: type) -> dict:
    """The nested mapping of ``cls``'s defaults (nested dataclasses expanded; tuples as lists)."""

    def plain(v):
        if dataclasses.is_dataclass(v):
            return {k: plain(x) for k, x in dataclasses.asdict(v).items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(cls())


def describe(cls: type) -> list[Setting]:
    """The documented fields of a config dataclass, in declaration order."""
    hints = _hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if f.default is not _MISSING:
            default = f.default
        elif f.default_factory is not _MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = None
        meta = f.metadata
        out.append(
            Setting(
                name=f.name,
                type=hints[f.name],
                default=default,
                help=str(meta.get("help", "")),
                source=str(meta.get("source", "")),
                choices=meta.get("choices"),
                bounds=_bounds(meta),
                cli=bool(meta.get("cli", True)),
            )
        )
    return out
