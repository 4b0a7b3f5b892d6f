"""Segmentation-guided classification through the Python API: a segmenter finds the lesion, a
classifier looks at the square around it; both int8, run by the cart pipeline.

    python examples/guided_classifier.py OUT_DIR

(For the model cross-validation picked on the real set, train `efficientnet-lite0-segaux` instead:
an ordinary classifier once exported, so the cart needs nothing special for it.)
"""

import sys
from pathlib import Path

from edgebus.data.synthetic import make_synthetic
from edgebus.export import ExportConfig, export_run
from edgebus.runtime import LesionPipeline
from edgebus.training import TrainConfig, train

out = Path(sys.argv[1])
data = make_synthetic(out / "data", n_cases=120, seed=1)
seg = train(TrainConfig(data=str(data), model="test-unet", out=str(out / "segmenter"), size=64, epochs=20, lr=3e-3,
                        batch=8))
# val/test crops are cut with this segmenter's boxes (it trained on the same split, so it never saw them)
cls = train(TrainConfig(data=str(data), model="test-cnn", out=str(out / "classifier"), size=64, epochs=25, lr=3e-3,
                        crop_margin=0.5, segmenter=str(seg.path)))
print("crop classifier, test:", {k: cls.manifest.keras_metrics("test")[k] for k in ("accuracy", "auc")})
for run in (seg, cls):
    export_run(run.path, ExportConfig(formats=["float32", "int8"], qat_epochs=2))

cart = LesionPipeline(classifier=cls.path, segmenter=seg.path)  # the int8 exports
frame = sorted((data / "BrEaST-Lesions_USG-images_and_masks").glob("case0??.png"))[0]
r = cart.predict(frame)
print(f"{frame.name}: {r['label']} {r['prob_malignant']:.3f}, lesion bbox {r['bbox']}, classified square {r['crop']}")
cart.overlay(frame, r).save(out / "overlay.png")
