"""Issue 34: `edgebus pipeline`, a session from one file, resumable; training/cart.toml is such a file."""

from __future__ import annotations

import inspect
import json

import typer.models as tm

from edgebus.config.pipeline import command_line, read_pipeline
from pathlib import Path

from tests.conftest import cli

REPO = Path(__file__).resolve().parents[1]

TINY = """
name = "tiny"
[[step]]
name = "run"
command = "train classify"
options = {{ data = "{{data}}", model = "test-cnn", size = 32, epochs = 1, quiet = true, out = "{{runs}}/run" }}
[[step]]
name = "float"
command = "export"
args = ["{{runs}}/run"]
options = {{ formats = ["float32"] }}
output = "{{runs}}/run/model_float32.tflite"
{extra}
"""
BUNDLE = """
[[step]]
name = "cart"
command = "bundle"
options = { classifier = "{runs}/run", format = "float32", out = "{runs}/cart" }
"""


def _options_of(command: str) -> set[str]:
    from edgebus.cli import app

    t, words = app, command.split()
    for w in words[:-1]:
        t = next(g.typer_instance for g in t.registered_groups if g.name == w)
    cb = next(c.callback for c in t.registered_commands if (c.name or c.callback.__name__) == words[-1])
    return {p.name for p in inspect.signature(cb).parameters.values() if isinstance(p.default, tm.OptionInfo)}


def test_the_recommended_cart_file_names_only_options_its_commands_take():
    d = read_pipeline(REPO / "training" / "cart.toml")
    assert [s["name"] for s in d["step"]][-1] == "cart"
    for s in d["step"]:
        assert set(s.get("options", {})) <= _options_of(s["command"]), s["name"]
        argv = command_line(s, {"data": "D", "runs": "R", "weights": "W"})
        assert "{" not in " ".join(argv), argv


def test_a_pipeline_runs_once_and_skips_what_it_finished(synthetic_breast_dir, tmp_path):
    f, runs = tmp_path / "p.toml", tmp_path / "runs"
    f.write_text(TINY.format(extra=""))
    r = cli("pipeline", f, "--data", synthetic_breast_dir, "--out", runs)
    assert r.exit_code == 0 and "2 step(s) ran, 0 skipped" in r.output, r.output
    stamp = (runs / "run" / "manifest.json").stat().st_mtime_ns
    f.write_text(TINY.format(extra=BUNDLE))  # a step added: the finished ones are skipped, the new one runs
    r = cli("pipeline", f, "--data", synthetic_breast_dir, "--out", runs, "--dry-run")
    assert r.exit_code == 0 and "1 step(s) would run, 2 done before" in r.output, r.output
    assert not (runs / "cart").exists()
    r = cli("pipeline", f, "--data", synthetic_breast_dir, "--out", runs)
    assert r.exit_code == 0 and "1 step(s) ran, 2 skipped" in r.output, r.output
    assert (runs / "cart" / "bundle.json").is_file()
    assert (runs / "run" / "manifest.json").stat().st_mtime_ns == stamp
    rows = [json.loads(x) for x in (runs / "pipeline.jsonl").read_text().splitlines()]
    assert [x["step"] for x in rows] == ["run", "float", "cart"]
    settings = json.loads((runs / "run" / "manifest.json").read_text())["stages"]["export"]["settings"]
    assert settings["formats"] == ["float32"] and settings["max_missed"] == 0 and "overwrite" not in settings


def test_a_failed_step_stops_the_pipeline_with_one_line(synthetic_breast_dir, tmp_path):
    f = tmp_path / "p.toml"
    f.write_text(TINY.format(extra="").replace('model = "test-cnn"', 'model = "no-such-model"'))
    r = cli("pipeline", f, "--data", synthetic_breast_dir, "--out", tmp_path / "runs")
    assert r.exit_code == 2 and "step 'run' stopped" in r.output and "run the same pipeline command again" in r.output
    f.write_text('[[step]]\nname = "x"\ncommand = "train classify"\noptions = { epoch = 3 }\n')
    r = cli("pipeline", f, "--data", synthetic_breast_dir, "--out", tmp_path / "runs")
    assert r.exit_code == 2 and "unknown option(s) epoch" in r.output
