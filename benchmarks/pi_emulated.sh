#!/usr/bin/env bash
# The Raspberry Pi path, emulated: an arm64 Debian bookworm Python 3.11 (Pi OS Bookworm 64-bit base)
# under qemu-user, with ONLY the core install (numpy, pillow, typer, ai-edge-litert; no TensorFlow,
# no pandas). Packs a run, benchmarks the pack there and on the host, and compares the metrics.
# Emulated timings say nothing about Pi speed; what this proves is that the device path runs and
# gives the same answers on aarch64.
#
#   bash benchmarks/pi_emulated.sh RUN OUT_DIR
set -euo pipefail
RUN=$1; OUT=$2
HERE=$(cd "$(dirname "$0")/.." && pwd)
PI=${PI_TOOL:-$HERE/../shared/tools/pi/run_aarch64.sh}
SITE=${PI_DIR:-${TMPDIR:-/tmp}/pi}/site
bash "$PI" setup >/dev/null
# typer and what it needs, as aarch64 wheels (pydantic-core is compiled), then edgebus itself without
# dependencies (numpy, pillow and ai-edge-litert are already there)
python3 -m pip install -q --target "$SITE" --upgrade --only-binary=:all: --python-version 3.11 --implementation cp \
  --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64 --platform manylinux_2_28_aarch64 typer
python3 -m pip install -q --no-deps --upgrade --target "$SITE" "$HERE"
mkdir -p "$OUT"
rm -rf "$OUT/pack"
edgebus bench "$RUN" --pack "$OUT/pack"
cp -r "$OUT/pack" "$OUT/pack-host"
bash "$PI" py -c "import sys, importlib.util as u; assert u.find_spec('tensorflow') is None and u.find_spec('pandas') is None; \
from edgebus.cli import app; sys.argv = ['edgebus', 'bench', '$OUT/pack', '--warmup', '1', '--runs', '3']; app()" > "$OUT/pi.log" 2>&1 || { cat "$OUT/pi.log"; exit 1; }
edgebus bench "$OUT/pack-host" --warmup 1 --runs 3 --no-keras > "$OUT/host.log" 2>&1
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
pi = json.load(open(f"{out}/pack/report.json")); host = json.load(open(f"{out}/pack-host/report.json"))
print(f"emulated: {pi['machine']['arch']} {pi['machine']['cpu']} / {pi['machine']['interpreter']}; host: {host['machine']['arch']}")
same = True
for a, b in zip(pi["rows"], host["rows"]):
    eq = a["metrics"] == b["metrics"]
    same &= eq
    print(f"{a['format']:10s} status {a['status']:>6s}  metrics {a['metrics']}  identical to host: {eq}")
print("ALL IDENTICAL" if same else "DIFFERENCES FOUND")
PY
