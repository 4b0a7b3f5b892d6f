"""Content hashes of a data set's images: the same image saved twice (even re-encoded) is found by
its decoded pixels, so edgebus.core.splits can keep copies in one split part."""

from __future__ import annotations

import hashlib

from edgebus.core.io import sha256_file
from edgebus.data.preprocess import load_gray


def content_hashes(cases) -> dict[int, dict]:
    """{case_id: {"file": sha256 of the image file's bytes, "pixels": sha256 of its decoded grayscale
    pixels}}. The pixel hash also catches the same image saved twice with different encodings."""
    out = {}
    for c in cases:
        g = load_gray(c.image)
        px = hashlib.sha256(f"{g.shape}".encode() + g.tobytes()).hexdigest()
        out[c.case_id] = {"file": sha256_file(c.image), "pixels": px}
    return out
