"""edgebus.core.io.merge3: the three-way merge that lets two stages save one run's manifest at once
(Run.save lays what this process changed since it read the manifest over what is on disk now).
Issue 32: it had no test of its own."""

import copy

from hypothesis import given, settings
from hypothesis import strategies as st

from edgebus.core.io import merge3


def m3(base, mine, theirs):
    """merge3, checking that it changes none of its inputs."""
    before = copy.deepcopy((base, mine, theirs))
    out = merge3(base, mine, theirs)
    assert (base, mine, theirs) == before, "merge3 changed an input"
    return out


def test_one_side_unchanged_takes_the_other():
    base = {"a": 1, "b": [1, 2]}
    theirs = {"a": 1, "b": [1, 2, 3], "c": "new"}
    assert m3(base, copy.deepcopy(base), theirs) == theirs
    assert m3(base, theirs, copy.deepcopy(base)) == theirs
    assert m3(1, 1, 2) == 2 and m3(1, 2, 1) == 2  # scalars too


def test_dicts_merge_key_by_key():
    base = {"a": 1, "b": 1, "c": 1}
    mine = {"a": 2, "b": 1, "c": 1}
    theirs = {"a": 1, "b": 3, "c": 1}
    assert m3(base, mine, theirs) == {"a": 2, "b": 3, "c": 1}


def test_keys_added_on_both_sides_are_all_kept_theirs_first():
    out = m3({"x": 0}, {"x": 0, "mine": 1}, {"x": 0, "theirs": 2})
    assert out == {"x": 0, "mine": 1, "theirs": 2}
    assert list(out) == ["x", "theirs", "mine"]  # the file's order, then what this process added


def test_a_deletion_on_one_side_survives():
    base = {"keep": 1, "gone": 2}
    assert m3(base, {"keep": 1}, {"keep": 1, "gone": 2, "new": 3}) == {"keep": 1, "new": 3}  # mine deleted
    assert m3(base, {"keep": 1, "gone": 2, "new": 3}, {"keep": 1}) == {"keep": 1, "new": 3}  # theirs deleted
    assert m3(base, {"keep": 1}, {"keep": 1}) == {"keep": 1}  # both deleted


def test_both_sides_changed_a_scalar_mine_wins():
    assert m3({"t": 0.5}, {"t": 0.4}, {"t": 0.6}) == {"t": 0.4}
    assert m3({"t": 0.5}, {"t": 0.4}, {"t": 0.4}) == {"t": 0.4}  # the same change on both sides
    # deleted here, changed there (and the other way round): this process's change wins
    assert m3({"t": 0.5}, {}, {"t": 0.6}) == {}
    assert m3({"t": 0.5}, {"t": 0.4}, {}) == {"t": 0.4}
    # a dict on one side, a scalar on the other: no key-by-key merge, mine
    assert m3({"e": {"a": 1}}, {"e": None}, {"e": {"a": 1, "b": 2}}) == {"e": None}
    assert m3({"e": None}, {"e": {"a": 1}}, {"e": 7}) == {"e": {"a": 1}}


def test_nested_dicts_merge_at_every_depth():
    """Two exports of one run: each adds its own export and artifact entries, and each changed one
    nested field; every change survives, and where both changed the same leaf mine wins."""
    base = {"task": "classify", "exports": {"float32": {"file": "model_float32.tflite", "status": "ok"}},
            "artifacts": {"model.keras": {"sha256": "aa"}}, "stages": {"export": {"formats": ["float32"], "n": 1}}}
    mine = copy.deepcopy(base)
    mine["exports"]["float16"] = {"file": "model_float16.tflite", "status": "ok"}
    mine["artifacts"]["model_float16.tflite"] = {"sha256": "16"}
    mine["stages"]["export"].update(formats=["float16"], n=2)
    theirs = copy.deepcopy(base)
    theirs["exports"]["dynamic"] = {"file": "model_dynamic.tflite", "status": "ok"}
    theirs["exports"]["float32"]["status"] = "gate_failed"
    theirs["artifacts"]["model_dynamic.tflite"] = {"sha256": "dd"}
    theirs["stages"]["export"].update(formats=["dynamic"], n=3, extra=True)
    out = m3(base, mine, theirs)
    assert out["task"] == "classify"
    assert out["exports"] == {"float32": {"file": "model_float32.tflite", "status": "gate_failed"},
                              "dynamic": {"file": "model_dynamic.tflite", "status": "ok"},
                              "float16": {"file": "model_float16.tflite", "status": "ok"}}
    assert set(out["artifacts"]) == {"model.keras", "model_float16.tflite", "model_dynamic.tflite"}
    assert out["stages"]["export"] == {"formats": ["float16"], "n": 2, "extra": True}


def test_base_missing_or_not_a_dict():
    # no manifest as read (None), or a key absent from it: both sides made the dict, keys of both kept
    assert m3(None, {"a": 1}, {"b": 2}) == {"b": 2, "a": 1}
    assert m3({}, {"exports": {"f16": 1}}, {"exports": {"dyn": 2}}) == {"exports": {"dyn": 2, "f16": 1}}
    assert m3({"exports": None}, {"exports": {"f16": 1}}, {"exports": {"dyn": 2}}) == {"exports": {"dyn": 2, "f16": 1}}
    # both made the same key with different scalars: mine
    assert m3({}, {"k": 1}, {"k": 2}) == {"k": 1}


def test_lists_are_values_not_merged_element_by_element():
    base = {"formats": ["float32"]}
    assert m3(base, {"formats": ["float32", "int8"]}, {"formats": ["float32", "float16"]}) == {"formats": ["float32", "int8"]}
    assert m3(base, {"formats": ["float32"]}, {"formats": ["float16"]}) == {"formats": ["float16"]}
    assert m3(base, {"formats": []}, {"formats": ["float32"]}) == {"formats": []}
    # a list of dicts is a value too (a merge inside it would invent rows neither side wrote)
    rows = {"rows": [{"t": 1}]}
    assert m3(rows, {"rows": [{"t": 1}, {"t": 2}]}, {"rows": [{"t": 1, "x": 0}]}) == {"rows": [{"t": 1}, {"t": 2}]}


_json = st.recursive(st.none() | st.booleans() | st.integers(-3, 3) | st.sampled_from(["a", "b"]),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from("pqrs"), inner, max_size=4),
                     max_leaves=12)
_dicts = st.dictionaries(st.sampled_from("pqrs"), _json, max_size=4)


@settings(max_examples=300, deadline=None)
@given(_dicts, _dicts, _dicts)
def test_merge_properties(base, mine, theirs):
    # whoever did not change anything gets the other's file; the same change on both sides is that change
    assert m3(base, base, theirs) == theirs
    assert m3(base, mine, base) == mine
    assert m3(base, mine, mine) == mine
    out = m3(base, mine, theirs)
    for k in set(base) | set(mine) | set(theirs):
        b, m, t = (d.get(k, KeyError) for d in (base, mine, theirs))
        if m == b:  # a key this process left alone is what the file says now (absent if deleted there)
            assert out.get(k, KeyError) == t, k
        elif t == b or not (isinstance(m, dict) and isinstance(t, dict)):  # a key this process changed: its value
            assert out.get(k, KeyError) == m, k


def test_two_runs_loaded_before_either_saves_keep_both_entries(tmp_path):
    """Run.save through merge3: two processes' views of one run, both read before either saved."""
    from edgebus.core.manifest import Run

    run = Run.create(tmp_path / "r", "classify")
    a, b = Run.load(run.path), Run.load(run.path)
    for r, name in ((a, "a.json"), (b, "b.json")):
        r.file(name).write_text("{}")
        r.add_artifact(name, "test")
        r.manifest.metrics[name] = {"n": 1}
    a.save()
    b.save()
    again = Run.load(run.path).manifest
    assert {"a.json", "b.json"} <= set(again.artifacts) and {"a.json", "b.json"} <= set(again.metrics)
    b.manifest.artifacts.pop("b.json")  # a later save of b lays only its own change (the deletion) over a's
    b.save()
    again = Run.load(run.path).manifest
    assert "a.json" in again.artifacts and "b.json" not in again.artifacts

