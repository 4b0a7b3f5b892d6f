"""The README as a front door and the docs site (issue #33): the README stays short and keeps the two
set-up commands, its relative links resolve, every command of the typer app is in the generated command
reference, and `mkdocs build --strict` is clean (skipped where the docs extra is not installed)."""

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DEMO_COMMAND = "python3 -m venv .venv && .venv/bin/pip install -e '.[train]' && .venv/bin/edgebus demo"
TEST_COMMAND = ("python3 -m venv .venv && .venv/bin/pip install -q -e '.[train,dev,weights,dicom,quantizer,cluster]' "
                "&& .venv/bin/python -m pytest -q")


def _reference():
    spec = importlib.util.spec_from_file_location("cli_reference", ROOT / "docs" / "hooks" / "cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_is_a_front_door():
    text = README.read_text(encoding="utf-8")
    assert len(text) < 12_000, f"README.md has {len(text)} characters; move detail into docs/"


def test_readme_keeps_the_two_set_up_commands():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert DEMO_COMMAND in lines and TEST_COMMAND in lines  # whole lines, byte for byte
    assert TEST_COMMAND in (ROOT / ".ci" / "run").read_text().splitlines()  # CI runs the README's test command


def test_readme_relative_links_resolve():
    text = README.read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    relative = [x for x in links if not re.match(r"[a-z][a-z0-9+.-]*:", x) and not x.startswith("#")]
    assert relative, "the README links into docs/"
    broken = [x for x in relative if not (ROOT / x.split("#")[0]).exists()]
    assert not broken, f"README.md links to missing files: {broken}"


def test_every_command_is_in_the_generated_reference():
    """Walked from the click tree of the typer app itself, sub-groups (cv classify, train segment...) included."""
    import typer

    from edgebus.cli import app

    ref = _reference()
    page = ref.render(app)
    expected = []

    def walk(command, path):
        expected.append(path)
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, f"{path} {name}")

    walk(typer.main.get_command(app), "edgebus")
    assert {"edgebus cv classify", "edgebus cv segment", "edgebus train classify", "edgebus predict"} <= set(expected)
    assert sorted(ref.command_paths(app)) == sorted(expected)
    headings = set(re.findall(r"^#{2,4} (edgebus[a-z0-9 -]*?) \{#", page, re.M))
    assert headings == set(expected), set(expected) ^ headings
    for path in expected[1:]:
        assert f"```text\nUsage: {path} " in page, path
    assert "--target-sensitivity" in page and "--group-by" in page  # options, not just names


def test_generating_the_reference_loads_no_tensorflow():
    code = ("import sys, importlib.util as u; s = u.spec_from_file_location('r', 'docs/hooks/cli_reference.py'); "
            "m = u.module_from_spec(s); s.loader.exec_module(m); m.render(); "
            "sys.exit('tensorflow' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_docs_build_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs extra is not installed: pip install -e '.[docs]'")
    pytest.importorskip("material", reason="the docs extra is not installed: pip install -e '.[docs]'")
    pytest.importorskip("mkdocstrings_handlers.python", reason="the docs extra is not installed: pip install -e '.[docs]'")
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent))
    cmd = [mkdocs] if mkdocs else [sys.executable, "-m", "mkdocs"]
    r = subprocess.run([*cmd, "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                       capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    cli = (tmp_path / "site" / "cli" / "index.html").read_text(encoding="utf-8")
    assert 'id="edgebus-cv-classify"' in cli and 'id="edgebus-predict"' in cli
    assert 'id="edgebus.runtime.LesionPipeline"' in (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8")
