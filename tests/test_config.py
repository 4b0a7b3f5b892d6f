"""Issue 34: settings declared once. Every CLI option has exactly one declaration; the library names
options only through core.errors.flag, with names the CLI has; a settings file (TOML or YAML) fills what
the command line does not give; a run's config.toml makes the run again."""

from __future__ import annotations

import ast
import collections
import dataclasses
import inspect
import re
import tomllib
from pathlib import Path

import pytest
import typer.models as tm
from hypothesis import given, settings, strategies as st

from edgebus.cli import app
from edgebus.config import OPTIONS, check, read_config, write_config
from edgebus.config.stages import CVConfig, ExportConfig, GridConfig, TrainConfig
from edgebus.core.errors import EdgebusError
from tests.conftest import cli

PACKAGE = Path(__file__).resolve().parents[1] / "edgebus"
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
FOREIGN = {"--force-reinstall", "--head"}  # other programs' options in a message (pip, ray start)


def _commands(t=app, path="edgebus"):
    for c in t.registered_commands:
        yield f"{path} {c.name or c.callback.__name__}", c.callback
    if t.registered_callback and t.registered_callback.callback:
        yield path, t.registered_callback.callback
    for g in t.registered_groups:
        yield from _commands(g.typer_instance, f"{path} {g.name}")


def _options():
    """(command, parameter name, its typer OptionInfo) of every option of every command."""
    for name, cb in _commands():
        for p in inspect.signature(cb).parameters.values():
            if isinstance(p.default, tm.OptionInfo):
                yield name, p.name, p.default


def test_every_option_has_exactly_one_declaration():
    decls = collections.defaultdict(set)
    for _, name, info in _options():
        decls[name].add(id(info))
    assert len(decls) > 60  # the walk found the CLI
    twice = {k: len(v) for k, v in decls.items() if len(v) != 1}
    assert not twice, f"options declared more than once: {twice}"
    undeclared = sorted(set(decls) - set(OPTIONS))
    assert not undeclared, f"options not in edgebus.config.options: {undeclared}"
    unused = sorted(set(OPTIONS) - set(decls))
    assert not unused, f"declared but no command takes them: {unused}"


def test_stage_fields_are_declared_options_of_their_commands():
    """Each stage dataclass's settings are options of its command, so a recorded config.toml is readable."""
    takes = collections.defaultdict(set)
    for command, name, _ in _options():
        takes[command].add(name)
    for cls, command in ((TrainConfig, "edgebus train classify"), (GridConfig, "edgebus grid classify"),
                         (CVConfig, "edgebus cv segment"), (ExportConfig, "edgebus export")):
        fields = {f.name for f in dataclasses.fields(cls) if f.metadata.get("option")}
        assert fields and fields <= takes[command], (cls.__name__, fields - takes[command])
        plain = {f.name for f in dataclasses.fields(cls) if not f.metadata.get("option")}
        assert not plain & set(OPTIONS), f"{cls.__name__}: {plain & set(OPTIONS)} bypass their declaration"


def _strings(tree):
    """String constants that are not docstrings (a bare string statement: a module, class, function or
    attribute docstring)."""
    docs = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            yield node


def test_the_library_names_options_only_through_flag():
    """No `--option` text in a string outside edgebus/cli and edgebus/config: a message names an option with
    core.errors.flag("name"), and every such name is an option the CLI has (a renamed option cannot leave a
    stale message)."""
    literal, unknown = [], []
    for p in sorted(PACKAGE.rglob("*.py")):
        rel = p.relative_to(PACKAGE)
        tree = ast.parse(p.read_text())
        if rel.parts[0] not in ("cli", "config"):
            literal += [f"{rel}:{n.lineno}: {m}" for n in _strings(tree) for m in FLAG.findall(n.value)
                        if m not in FOREIGN]
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "flag" and node.args \
                    and isinstance(node.args[0], ast.Constant) and node.args[0].value not in OPTIONS:
                unknown.append(f"{rel}:{node.lineno}: flag({node.args[0].value!r})")
    assert not literal, "write these with core.errors.flag:\n" + "\n".join(literal)
    assert not unknown, "not options of the CLI:\n" + "\n".join(unknown)


def test_the_flag_check_finds_a_literal_option():
    """The scan above can fail: it sees an option in a message and skips docstrings."""
    tree = ast.parse('"""Mentions --size in a docstring."""\nraise E("--size 0: give 1 or more")\n')
    assert [FLAG.findall(n.value) for n in _strings(tree)] == [["--size"]]


def test_a_bad_value_is_refused_by_its_declaration_before_any_folder(synthetic_breast_dir, tmp_path):
    out = tmp_path / "never"
    for args, words in ((["--size", "0"], "--size 0: give a whole number >= 1"),
                        (["--keep", "worst"], "--keep 'worst': give one of best, last"),
                        (["--epochs", "5,x"], "--epochs '5,x': give comma-separated"),
                        (["--model-kwargs", "{alpha"], "--model-kwargs '{alpha': give a JSON table")):
        r = cli("train", "classify", "--data", synthetic_breast_dir, "--model", "test-cnn", "--out", out, *args)
        assert r.exit_code == 2 and words in r.output and "Traceback" not in r.output, r.output
    assert not out.exists()


def test_settings_file_sits_between_defaults_and_the_command_line(tmp_path):
    """Top level for every command, [cv] over it for cv and train, [train] over both for train."""
    f = tmp_path / "s.toml"
    f.write_text('model = "test-cnn"\nsize = 40\nepochs = [1, 2]\n[cv]\nepochs = 3\nsize = 48\n[train]\nsize = 56\n')
    assert read_config(f, "grid")[0] == {"model": "test-cnn", "size": 40, "epochs": [1, 2]}
    assert read_config(f, "cv")[0] == {"model": "test-cnn", "size": 48, "epochs": 3}
    assert read_config(f, "train")[0] == {"model": "test-cnn", "size": 56, "epochs": 3}
    y = tmp_path / "s.yaml"
    y.write_text("model: test-cnn\nsize: 40\ncv:\n  size: 48\n")
    assert read_config(y, "cv")[0] == {"model": "test-cnn", "size": 48}


@pytest.mark.parametrize("text, words", [
    ('modle = "x"\n', "unknown key(s) modle"),
    ('[cv]\nfold = 3\n', "unknown key(s) fold in [cv]"),
    ('size = -3\n', "size = -3: give a whole number >= 1"),
    ('keep = "x"\n', "keep = 'x': give one of best, last"),
    ('size = \n', "not valid TOML"),
    ('[vc]\nfolds = 3\n', "[vc] is not a command"),
    (b'\xff\xfe\x00size', "not a text file"),
])
def test_a_bad_settings_file_gets_one_line_naming_it(tmp_path, text, words):
    f = tmp_path / "bad.toml"
    f.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(EdgebusError, match=re.escape(words)) as e:
        read_config(f, "cv")
    assert str(f) in str(e.value) and "\n" not in str(e.value)


def test_a_table_may_name_exactly_the_commands_of_the_cli():
    from edgebus.config.files import TABLES

    names = {c.name or c.callback.__name__ for c in app.registered_commands} | {g.name for g in app.registered_groups}
    assert set(TABLES) == names


_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-10**9, 10**9) | st.text(max_size=20)
                       | st.floats(allow_nan=False, allow_infinity=False),
                       lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=3),
                       max_leaves=6)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.from_regex(r"[a-z_]{1,12}", fullmatch=True), _VALUES, max_size=6))
def test_written_settings_read_back_the_same(tmp_path_factory, values):
    """The TOML writer against Python's own TOML reader (None: not written, as 'not set')."""
    def drop_none(v):
        if isinstance(v, dict):
            return {k: drop_none(x) for k, x in v.items() if x is not None}
        return [drop_none(x) for x in v if x is not None] if isinstance(v, list) else v

    values = {k: drop_none(v) for k, v in values.items() if v is not None}
    p = tmp_path_factory.mktemp("w") / "c.toml"
    write_config(p, values, comment="a\nb")
    assert tomllib.loads(p.read_text()) == values


def test_check_accepts_what_the_stages_default_to():
    for cls in (TrainConfig, GridConfig, CVConfig, ExportConfig):
        for f in dataclasses.fields(cls):
            if f.metadata.get("option"):
                default = f.default_factory() if f.default is dataclasses.MISSING else f.default
                check(f.metadata["option"], list(default) if isinstance(default, tuple) else default)


def test_a_runs_config_toml_makes_the_same_run_again(synthetic_breast_dir, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    r = cli("train", "classify", "--data", synthetic_breast_dir, "--model", "test-cnn", "--size", 32, "--epochs", 1,
            "--lr", "3e-3", "--out", a, "--quiet")
    assert r.exit_code == 0, r.output
    rec = tomllib.loads((a / "config.toml").read_text())
    assert rec["model"] == "test-cnn" and rec["size"] == 32 and rec["epochs"] == 1 and rec["lr"] == 3e-3
    assert "out" not in rec and Path(rec["data"]).is_absolute()
    r = cli("train", "classify", "--config", a / "config.toml", "--out", b, "--quiet")
    assert r.exit_code == 0, r.output
    assert (b / "config.toml").read_text() == (a / "config.toml").read_text()
    import json

    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
    for key in ("data", "model", "preprocess", "split"):
        assert ma[key] == mb[key], key
    assert "config.toml" in ma["artifacts"]
    # the command line wins over the file; a file of another task is refused
    r = cli("train", "classify", "--config", a / "config.toml", "--epochs", 2, "--out", tmp_path / "c", "--quiet")
    assert r.exit_code == 0 and tomllib.loads((tmp_path / "c" / "config.toml").read_text())["epochs"] == 2
    r = cli("train", "segment", "--config", a / "config.toml", "--out", tmp_path / "d")
    assert r.exit_code == 2 and "a classify recipe" in r.output and not (tmp_path / "d").exists()
