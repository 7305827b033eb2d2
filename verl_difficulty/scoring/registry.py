"""The scorer registry: every scorer the engine and the command line know, by name.

Scorers register themselves with the :func:`register_scorer` class decorator when their module is imported. The
registry imports, on first use:

* every module of the :mod:`verl_difficulty.scoring.scorers` package (the built-in scorers);
* every entry point of the group ``verl_difficulty.scorers`` (third-party packages: the entry point names a module
  that registers scorers, or a :class:`~verl_difficulty.scoring.scorer.Scorer` subclass, registered if it is not);

and :func:`load_scorer_module` imports any other module that registers scorers (``verl-difficulty score
--scorer-module MODULE``). Nothing outside the scorer modules names a scorer.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import logging
import pkgutil
import re
from typing import Any, Optional

from verl_difficulty.scoring.scorer import NEEDS, Scorer

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "verl_difficulty.scorers"
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_SCORERS: dict[str, type] = {}
_loaded = False


def register_scorer(cls: type) -> type:
    """Class decorator: register a :class:`Scorer` subclass under ``cls.name`` (checked: name, version, ``Params``
    dataclass, ``needs``). Registering another class under a taken name raises ``ValueError``; registering the same
    class again (a module imported twice) replaces it."""
    if not (isinstance(cls, type) and issubclass(cls, Scorer)):
        raise TypeError(f"register_scorer: {cls!r} is not a Scorer subclass")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"scorer {cls.__qualname__}: name must match {_NAME.pattern}, got {name!r}")
    if not isinstance(getattr(cls, "version", None), str):
        raise ValueError(f"scorer {name}: version must be a string")
    if not dataclasses.is_dataclass(getattr(cls, "Params", None)):
        raise ValueError(f"scorer {name}: Params must be a dataclass (fields declared with config.setting)")
    needs = frozenset(cls.needs)
    if not needs or not needs <= set(NEEDS):
        raise ValueError(f"scorer {name}: needs must be a non-empty subset of {NEEDS}, got {sorted(needs)}")
    old = _SCORERS.get(name)
    if old is not None and old is not cls and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"scorer name {name!r} is taken by {old.__module__}.{old.__qualname__}")
    _SCORERS[name] = cls
    return cls


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    from verl_difficulty.scoring import scorers as builtin

    for info in pkgutil.iter_modules(builtin.__path__):
        importlib.import_module(f"{builtin.__name__}.{info.name}")
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as e:  # noqa: BLE001 - a broken third-party scorer must not break the others
            logger.warning("could not load scorer entry point %s = %s: %s: %s", ep.name, ep.value,
                           type(e).__name__, e)
            continue
        if isinstance(obj, type) and issubclass(obj, Scorer) and obj.name not in _SCORERS:
            register_scorer(obj)


def load_scorer_module(module: str) -> None:
    """Import ``module`` so that the scorers it defines register themselves (``--scorer-module``)."""
    _load()
    importlib.import_module(module)


def scorer_names() -> list[str]:
    """Names of all registered scorers, sorted."""
    _load()
    return sorted(_SCORERS)


def scorer_classes() -> dict[str, type]:
    """All registered scorer classes by name (sorted by name)."""
    _load()
    return {n: _SCORERS[n] for n in sorted(_SCORERS)}


def get_scorer(name: str) -> type:
    """The scorer class registered under ``name`` (``ValueError`` listing the known names otherwise)."""
    _load()
    if name not in _SCORERS:
        raise ValueError(f"unknown scorer {name!r}; expected one of {sorted(_SCORERS)} (a scorer of another module: "
                         "--scorer-module MODULE, or an entry point of the group 'verl_difficulty.scorers')")
    return _SCORERS[name]


def make_scorer(name: str, params: Optional[dict] = None, classes: Optional[dict[str, Any]] = None) -> Scorer:
    """A scorer by name with its parameters (``ConfigError`` naming ``<name>.<param>`` for a bad parameter).

    ``classes`` (name -> class) are used before the registry (what the engine sends to its workers).
    """
    cls = (classes or {}).get(name) or get_scorer(name)
    return cls(**(params or {}))
