"""``verl-difficulty recipes``: the pin check's rule, export's refusal to overwrite, unknown names (on a recipe tree
built in the test, so the rules are checked independently of what ships)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from verl_difficulty.cli import main
from verl_difficulty.cli.recipes import IGNORE_PIN_ENV, check_pin, export_recipe, get_recipe, list_recipes


@pytest.fixture
def root(tmp_path) -> Path:
    root = tmp_path / "recipes"
    (root / "alpha" / "sub").mkdir(parents=True)
    (root / "alpha" / "a.yaml").write_text("defaults: [ppo_trainer]\n")
    (root / "alpha" / "run.sh").write_text("echo hi\n")
    (root / "alpha" / "README.md").write_text("intro\n# Alpha recipe\n")
    (root / "alpha" / "sub" / "notes.txt").write_text("n\n")
    (root / "alpha" / "__pycache__").mkdir()
    (root / "alpha" / "__pycache__" / "x.pyc").write_bytes(b"0")
    (root / "not_a_recipe").mkdir()
    (root / "not_a_recipe" / "file.txt").write_text("x")
    (root / "pins.yaml").write_text("alpha:\n  verl: 0.9.1\n")
    return root


def test_listing_finds_folders_with_configs(root):
    recipes = list_recipes(root)
    assert list(recipes) == ["alpha"]
    assert recipes["alpha"].title == "Alpha recipe" and recipes["alpha"].pinned_verl == "0.9.1"
    assert [p.relative_to(root / "alpha").as_posix() for p in recipes["alpha"].files()] == [
        "README.md", "a.yaml", "run.sh", "sub/notes.txt"]


@pytest.mark.parametrize("installed, code, words", [
    ("0.9.1", 0, "verl 0.9.1 (pinned 0.9.1)"),
    ("0.9.3", 0, "warning: recipe alpha was last run with verl 0.9.1; installed 0.9.3"),
    ("0.10.0", 3, "install 'verl==0.9.1'"),
    ("1.9.1", 3, f"{IGNORE_PIN_ENV}=1"),
    ("", 3, "verl is not installed"),
])
def test_pin_rule(root, installed, code, words):
    got, message = check_pin("alpha", installed=installed, root=root)
    assert got == code and words in message


def test_export_copies_makes_launchers_executable_and_refuses_to_overwrite(root, tmp_path):
    dest = tmp_path / "out"
    written = export_recipe("alpha", dest, root=root)
    assert sorted(p.relative_to(dest).as_posix() for p in written) == ["README.md", "a.yaml", "run.sh", "sub/notes.txt"]
    assert os.access(dest / "run.sh", os.X_OK) and not os.access(dest / "a.yaml", os.X_OK)
    export_recipe("alpha", dest, root=root)  # identical files: fine
    (dest / "a.yaml").write_text("mine\n")
    with pytest.raises(FileExistsError, match="--force"):
        export_recipe("alpha", dest, root=root)
    assert (dest / "a.yaml").read_text() == "mine\n"
    export_recipe("alpha", dest, force=True, root=root)
    assert (dest / "a.yaml").read_text() == "defaults: [ppo_trainer]\n"


def test_unknown_recipe_names_the_shipped_ones(root):
    with pytest.raises(KeyError, match="shipped recipes: alpha"):
        get_recipe("beta", root=root)


def test_cli_check_exit_codes(monkeypatch, capsys):
    import verl_difficulty.cli.recipes as r

    monkeypatch.setattr(r, "installed_verl", lambda: "0.10.0")
    monkeypatch.delenv(IGNORE_PIN_ENV, raising=False)
    assert main(["recipes", "check", "p3_durian"]) == 3
    assert "was last run with verl 0.9.1" in capsys.readouterr().err
    monkeypatch.setenv(IGNORE_PIN_ENV, "1")
    assert main(["recipes", "check", "p3_durian"]) == 0
    assert main(["recipes", "check", "nope"]) == 2
