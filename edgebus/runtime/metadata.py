"""Read the edgebus metadata embedded in a .tflite file, in pure Python (no TensorFlow, no
flatbuffers package), so a lone model file on a cart describes itself.

The TFLite schema's Model table has `metadata: [Metadata]` (field 6), each {name: string,
buffer: uint} pointing into `buffers: [Buffer]` (field 4), each {data: [ubyte]}. edgebus stores
its JSON under the name "edgebus"; the interpreter ignores metadata it does not know.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from edgebus.core.errors import EdgebusError

METADATA_NAME = "edgebus"


class _Table:
    def __init__(self, buf: bytes, pos: int):
        self.buf, self.pos = buf, pos
        vt = pos - struct.unpack_from("<i", buf, pos)[0]
        self.vt_len = struct.unpack_from("<H", buf, vt)[0]
        self.vt = vt

    def _field(self, i: int) -> int:
        off = 4 + 2 * i
        if off >= self.vt_len:
            return 0
        o = struct.unpack_from("<H", self.buf, self.vt + off)[0]
        return self.pos + o if o else 0

    def _deref(self, p: int) -> int:
        return p + struct.unpack_from("<I", self.buf, p)[0]

    def vector(self, i: int) -> tuple[int, int]:
        """(start of elements, count) of a vector field; (0, 0) when absent."""
        p = self._field(i)
        if not p:
            return 0, 0
        v = self._deref(p)
        return v + 4, struct.unpack_from("<I", self.buf, v)[0]

    def tables(self, i: int) -> list["_Table"]:
        start, n = self.vector(i)
        return [_Table(self.buf, self._deref(start + 4 * k)) for k in range(n)]

    def string(self, i: int) -> str | None:
        start, n = self.vector(i)
        return self.buf[start : start + n].decode() if start else None

    def uint32(self, i: int) -> int:
        p = self._field(i)
        return struct.unpack_from("<I", self.buf, p)[0] if p else 0

    def uint64(self, i: int) -> int:
        p = self._field(i)
        return struct.unpack_from("<Q", self.buf, p)[0] if p else 0


def read_metadata(path: str | Path, name: str = METADATA_NAME) -> dict | None:
    """The JSON metadata embedded under `name`, or None if the file has none."""
    path = Path(path)
    try:
        buf = path.read_bytes()
        if len(buf) < 8 or buf[4:8] != b"TFL3":
            raise EdgebusError(f"{path}: not a TFLite flatbuffer (no TFL3 identifier); re-export the model")
        model = _Table(buf, struct.unpack_from("<I", buf, 0)[0])
        buffers = model.tables(4)
        for md in model.tables(6):
            if md.string(0) == name:
                b = buffers[md.uint32(1)]
                start, n = b.vector(0)
                if not start:  # large models keep buffer data after the flatbuffer
                    off, n = b.uint64(1), b.uint64(2)
                    start = off
                return json.loads(buf[start : start + n].decode())
    except FileNotFoundError:
        raise EdgebusError(f"{path}: model file not found") from None
    except (struct.error, IndexError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EdgebusError(f"{path}: corrupt or truncated TFLite file ({e}); re-export the model") from None
    return None
