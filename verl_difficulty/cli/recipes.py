"""``verl-difficulty recipes {list,export,check}``: the shipped recipes for a pip-installed user.

The recipe folders (``recipes/<name>/`` in the repository) ship in the wheel as package data of
``verl_difficulty.recipes``. ``list`` shows them, ``export NAME DIR`` copies one folder out (launchers executable),
``check NAME`` compares the installed verl with the version the recipe was last run with (``recipes/pins.yaml``); every
launcher calls ``check`` first.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

PINS_FILE = "pins.yaml"
IGNORE_PIN_ENV = "VERL_DIFFICULTY_IGNORE_PIN"


def recipes_root() -> Path:
    """The folder holding the recipe folders: ``recipes/`` of a checkout or the installed ``verl_difficulty.recipes``."""
    from importlib.resources import files

    return Path(str(files("verl_difficulty.recipes")))


def _skipped(path: Path) -> bool:
    return path.name.startswith((".", "_")) or path.suffix in (".pyc",)


@dataclass(frozen=True)
class Recipe:
    name: str
    path: Path
    title: str
    pinned_verl: str | None

    def files(self) -> list[Path]:
        """The recipe's files (caches and hidden files left out)."""
        return sorted(p for p in self.path.rglob("*")
                      if p.is_file() and not any(_skipped(Path(part)) for part in p.relative_to(self.path).parts))


def read_pins(root: Path | None = None) -> dict[str, dict]:
    import yaml

    path = (root or recipes_root()) / PINS_FILE
    with open(path) as f:
        pins = yaml.safe_load(f) or {}
    if not isinstance(pins, dict):
        raise ValueError(f"{path}: expected a mapping recipe -> {{verl: VERSION, last_run: ...}}")
    return pins


def _title(folder: Path) -> str:
    readme = folder / "README.md"
    if readme.is_file():
        for line in readme.read_text().splitlines():
            if line.startswith("#"):
                return line.lstrip("#").strip()
    return ""


def list_recipes(root: Path | None = None) -> dict[str, Recipe]:
    """Every recipe folder (a folder with at least one YAML config), by name."""
    root = root or recipes_root()
    pins = read_pins(root)
    found = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not _skipped(p)):
        if any(folder.glob("*.yaml")):
            pin = pins.get(folder.name) or {}
            found[folder.name] = Recipe(folder.name, folder, _title(folder), pin.get("verl"))
    return found


def get_recipe(name: str, root: Path | None = None) -> Recipe:
    recipes = list_recipes(root)
    if name not in recipes:
        raise KeyError(f"no recipe {name!r}; shipped recipes: {', '.join(recipes)} (verl-difficulty recipes list)")
    return recipes[name]


def export_recipe(name: str, dest: str | os.PathLike, force: bool = False, root: Path | None = None) -> list[Path]:
    """Copy recipe ``name`` into ``dest`` (created); ``*.sh``/``*.sbatch`` become executable. Refuses to overwrite
    a file that differs unless ``force``. Returns the written paths."""
    recipe = get_recipe(name, root)
    dest = Path(dest)
    plan = [(src, dest / src.relative_to(recipe.path)) for src in recipe.files()]
    clashes = [d for s, d in plan if d.exists() and d.read_bytes() != s.read_bytes()]
    if clashes and not force:
        raise FileExistsError(f"{len(clashes)} file(s) in {dest} differ from recipe {name}, e.g. {clashes[0]}; "
                              "pass --force to overwrite them")
    written = []
    for src, dst in plan:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        if dst.suffix in (".sh", ".sbatch"):
            dst.chmod(dst.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        written.append(dst)
    return written


def installed_verl() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("verl")
    except PackageNotFoundError:
        return ""


def check_pin(name: str, installed: str | None = None, root: Path | None = None) -> tuple[int, str]:
    """(exit code, message) of the pin check: 0 = same version, 0 + warning = another patch of the same minor
    version, 3 = anything else (or verl missing)."""
    recipe = get_recipe(name, root)
    installed = installed_verl() if installed is None else installed
    pinned = recipe.pinned_verl
    if not pinned:
        return 3, f"recipe {name} has no verl pin in {PINS_FILE}"
    if not installed:
        return 3, f"recipe {name} needs verl {pinned}, but verl is not installed: pip install 'verl=={pinned}'"
    if installed == pinned:
        return 0, f"recipe {name}: verl {installed} (pinned {pinned})"
    if installed.split(".")[:2] == pinned.split(".")[:2]:
        return 0, (f"warning: recipe {name} was last run with verl {pinned}; installed {installed} (same minor "
                   "version, continuing)")
    return 3, (f"recipe {name} was last run with verl {pinned}, but verl {installed} is installed: install "
               f"'verl=={pinned}', or set {IGNORE_PIN_ENV}=1 to run it anyway on {installed}")


def _cmd_list(args) -> int:
    recipes = list_recipes()
    width = max((len(n) for n in recipes), default=4)
    for r in recipes.values():
        print(f"{r.name:<{width}}  verl {r.pinned_verl or '?':<7} {r.title}")
    print(f"\n{len(recipes)} recipes in {recipes_root()}; copy one out with: verl-difficulty recipes export NAME DIR")
    return 0


def _cmd_export(args) -> int:
    try:
        written = export_recipe(args.name, args.dir, force=args.force)
    except (KeyError, FileExistsError) as e:
        print(f"verl-difficulty recipes export: {e.args[0]}", file=sys.stderr)
        return 2
    print(f"exported recipe {args.name}: {len(written)} files in {Path(args.dir).resolve()}")
    for p in written:
        print(f"  {p}")
    return 0


def _cmd_check(args) -> int:
    try:
        code, message = check_pin(args.name)
    except KeyError as e:
        print(f"verl-difficulty recipes check: {e.args[0]}", file=sys.stderr)
        return 2
    if code and os.environ.get(IGNORE_PIN_ENV) == "1":
        print(f"warning: {message} ({IGNORE_PIN_ENV}=1: continuing)", file=sys.stderr)
        return 0
    print(message, file=sys.stderr if code or message.startswith("warning") else sys.stdout)
    return code


def add_parser(sub) -> None:
    p = sub.add_parser("recipes", help="the shipped recipes per paper: list, export NAME DIR, check NAME",
                       description=__doc__.split("\n\n")[1])
    cmds = p.add_subparsers(dest="recipes_command", required=True)
    cmds.add_parser("list", help="the shipped recipes with their verl pin").set_defaults(fn=_cmd_list)
    e = cmds.add_parser("export", help="copy a recipe folder out of the installed package")
    e.add_argument("name", help="recipe name (verl-difficulty recipes list)")
    e.add_argument("dir", help="destination folder (created)")
    e.add_argument("--force", action="store_true", help="overwrite files that differ")
    e.set_defaults(fn=_cmd_export)
    c = cmds.add_parser("check", help=f"compare the installed verl with the recipe's pin ({PINS_FILE}); "
                                      f"exit 3 on a mismatch ({IGNORE_PIN_ENV}=1 overrides)")
    c.add_argument("name", help="recipe name")
    c.set_defaults(fn=_cmd_check)
