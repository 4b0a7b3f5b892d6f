"""The cart's malignancy decision in one place (issue 34): the classifier file's threshold and calibration,
replaced by a fusion's, then by a site's; the recorded output decides the label."""

from types import SimpleNamespace

import pytest

from edgebus.core.calibration import apply
from edgebus.runtime.decision import cart_decision

CLS = SimpleNamespace(threshold=0.4, calibrated=lambda p: p / 2, labels=["benign", "malignant"])
FUSION = SimpleNamespace(threshold=0.3, calibrated=lambda p: p / 3)
SITE = {"threshold": 0.25, "calibration": {"method": "platt", "a": 1.0, "b": 0.5}}


def test_each_source_replaces_the_one_before_it():
    assert cart_decision(None) is None
    d = cart_decision(CLS)
    assert (d.source, d.threshold) == ("classifier", 0.4)
    assert d.decide(0.6) == {"prob_raw": 0.6, "prob_malignant": 0.3, "threshold": 0.4, "label": "malignant"}
    assert d.decide(0.39)["label"] == "benign"
    f = cart_decision(CLS, FUSION)
    assert (f.source, f.threshold) == ("fusion", 0.3) and f.decide(0.6)["prob_malignant"] == pytest.approx(0.2)
    s = cart_decision(CLS, FUSION, SITE)
    assert (s.source, s.threshold) == ("site", 0.25)
    # the site's recalibration applies after the cart's own (the fusion's here), on the shown probability
    assert s.decide(0.6)["prob_malignant"] == pytest.approx(float(apply(SITE["calibration"], 0.6 / 3)), abs=1e-6)
    plain = cart_decision(CLS, None, {"threshold": 0.5})  # a site threshold without a recalibration
    assert plain.decide(0.6)["prob_malignant"] == 0.3 and plain.decide(0.5)["label"] == "malignant"


def test_the_recorded_output_decides_the_label():
    d = cart_decision(CLS, None, {"threshold": 0.123457})
    assert d.decide(0.1234567)["label"] == "malignant"  # rounded to 6 digits, as the row records it
    assert d.decide(0.1234564)["label"] == "benign"


@pytest.mark.parametrize("kind", ["fusion", "presence"])
def test_a_bundles_json_models_share_one_checked_reader(kind, tmp_path):
    """fusion.json and presence.json from elsewhere: missing, not JSON, or missing a field -> one line naming
    the file and the command that makes it (edgebus.core.io.checked_file)."""
    from edgebus.core.errors import EdgebusError
    from edgebus.runtime.fusion import ShapeFusion
    from edgebus.runtime.presence import LesionPresence

    load, command = {"fusion": (ShapeFusion, "edgebus fuse"), "presence": (LesionPresence, "edgebus presence")}[kind]
    with pytest.raises(EdgebusError, match=f"not found; make it with '{command} ") as e:
        load(tmp_path / "nope.json")
    for body in ("{not json", '{"schema": "edgebus.presence/1"}'):
        (tmp_path / "x.json").write_text(body)
        with pytest.raises(EdgebusError, match=f"not a {kind} file of this edgebus .*re-run '{command}'") as e:
            load(tmp_path / "x.json")
        assert "\n" not in str(e.value)
