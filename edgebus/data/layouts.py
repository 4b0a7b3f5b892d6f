"""The frames of `edgebus predict`'s inputs, data-set layouts included: a BrEaST-layout folder gives its images
(and its sheet each frame's pixel size), a BUSI-layout folder the frames of its class folders; anything else
is edgebus.data.inputs'. Kept apart from it: the cart's runtime never reaches the sheet readers."""

from __future__ import annotations

from pathlib import Path

from edgebus.data.breast import IMAGES_DIR, breast_pixel_sizes, is_breast_layout
from edgebus.data.busi import is_busi_layout, read_busi
from edgebus.data.inputs import resolve_inputs


def frames_of(inputs) -> tuple[list[Path], int, Path | None]:
    """(frames, mask files skipped, the first BrEaST-layout folder among the inputs or None) of one input or a
    list: a BrEaST-layout folder gives its images (its sheet then gives pixel sizes), a BUSI-layout folder
    the frames of its class folders, anything else resolve_inputs. Each frame once, in the order given."""
    files, skipped, breast = [], 0, None
    for item in inputs if isinstance(inputs, (list, tuple)) else [inputs]:
        item = Path(item)
        if item.is_dir() and is_breast_layout(item):
            breast = breast or item
            item = item / IMAGES_DIR
        if item.is_dir() and is_busi_layout(item):
            found, k = [c.image for c in read_busi(item).cases], 0
        else:
            found, k = resolve_inputs(item)
        files, skipped = files + found, skipped + k
    return list(dict.fromkeys(files)), skipped, breast


def sheet_pixel_sizes(data, files, pixel_size, say) -> dict:
    """{frame name: mm per pixel} from a BrEaST-layout folder's sheet (needs pandas). A case whose Pixel_size is
    not a size (inf, abc, 0) or out of range is predicted with its mm^2 left out, one warning each; frames the
    sheet does not list take `pixel_size` (said once)."""
    sizes = breast_pixel_sizes(data, warn=lambda line: say(f"warning: {line}"))
    missing = sum(Path(f).name not in sizes for f in files)
    if missing:
        fallback = f"using the given pixel size, {pixel_size} mm" if pixel_size else "no mm^2 for them"
        say(f"{data}: {missing} of {len(files)} frames have no Pixel_size in the sheet; {fallback}")
    return sizes
