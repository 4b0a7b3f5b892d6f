"""Your own frame through a cart, from Python: load once, call per frame. Core install only (numpy,
pillow, typer, ai-edge-litert): no TensorFlow.

    python examples/cart_predict.py CART_BUNDLE_DIR FRAME.png [PIXEL_SIZE_MM]
"""

import sys

import edgebus

bundle, frame = sys.argv[1], sys.argv[2]
pixel_size_mm = float(sys.argv[3]) if len(sys.argv) > 3 else None

try:
    cart = edgebus.load(bundle)  # once, at start-up
    p = cart(frame, pixel_size_mm=pixel_size_mm)  # per frame
except edgebus.EdgebusError as e:  # one line that names the file and the fix
    sys.exit(str(e))
area = f"{p.area_px} px" + (f" = {p.area_mm2:.1f} mm^2" if p.area_mm2 else "")
print(f"{p.label} (p={p.prob:.3f}, threshold {p.threshold:.3f}); lesion {area}, bbox {p.bbox}; "
      f"{p.result['latency_ms']['total']:.1f} ms")
for w in p.warnings:
    print(f"warning: {w}")
p.plot().save("overlay.png")
print("overlay.png written")
