"""examples/ run end to end through the public API, as a user would start them (cart_predict.py,
which needs a bundle, runs in test_predict.py with TensorFlow blocked)."""

import re
import subprocess
import sys
from pathlib import Path

from PIL import Image

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _run(name, out):
    p = subprocess.run([sys.executable, str(EXAMPLES / name), str(out)], capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    return p.stdout


def test_train_export_bench_example(tmp_path):
    out = _run("train_export_bench.py", tmp_path / "o")
    assert re.search(r"\| model_int8\.tflite \| qat \|.*\| ok \|", out), out[-3000:]
    assert (tmp_path / "o" / "run" / "model_int8.tflite").is_file()


def test_guided_classifier_example(tmp_path):
    out = _run("guided_classifier.py", tmp_path / "o")
    test = re.search(r"crop classifier, test: \{'accuracy': ([0-9.]+), 'auc': ([0-9.]+)\}", out)
    assert test and float(test.group(2)) >= 0.8, out[-3000:]  # it learned the synthetic lesions (12 test frames)
    assert re.search(r"case\d+\.png: (benign|malignant) [0-9.]+, lesion bbox \[\d+, \d+, \d+, \d+\]", out), out[-3000:]
    with Image.open(tmp_path / "o" / "overlay.png") as im:
        assert im.size[0] > 0
