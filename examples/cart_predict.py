"""Embed the cart runtime: load the int8 models once, then call per frame. Core install only
(numpy, pillow, typer, ai-edge-litert): no TensorFlow.

    python examples/cart_predict.py CART_BUNDLE_DIR FRAME.png [PIXEL_SIZE_MM]
"""

import sys

from edgebus.runtime import LesionPipeline, render_overlay

bundle, frame = sys.argv[1], sys.argv[2]
pixel_size_mm = float(sys.argv[3]) if len(sys.argv) > 3 else None

pipeline = LesionPipeline.from_bundle(bundle)  # once, at start-up
result, gray = pipeline.predict_with_frame(frame, pixel_size_mm)  # per frame
if result["error"]:
    sys.exit(f"{frame}: {result['error']}")
print(f"{result['label']} (p={result['prob_malignant']:.3f}, threshold {result['threshold']:.3f}); "
      f"lesion {result['mask_area_px']} px" + (f" = {result['mask_area_mm2']:.1f} mm^2" if result["mask_area_mm2"] else "")
      + f", bbox {result['bbox']}; {result['latency_ms']['total']:.1f} ms")
render_overlay(gray, result).save("overlay.png")
print("overlay.png written")
