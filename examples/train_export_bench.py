"""The chain through the Python API: synthetic data -> train -> int8 export (QAT) -> benchmark.

    python examples/train_export_bench.py OUT_DIR
"""

import sys
from pathlib import Path

from edgebus.benchmarks import bench_run, write_report
from edgebus.data.synthetic import make_synthetic
from edgebus.export import ExportConfig, export_run
from edgebus.training import TrainConfig, train

out = Path(sys.argv[1])
data = make_synthetic(out / "data", n_cases=80, seed=0)
run = train(TrainConfig(data=str(data), model="test-cnn", out=str(out / "run"), size=64, epochs=15, lr=3e-3))
export_run(run.path, ExportConfig(formats=["float32", "int8"], qat_epochs=2))
result = bench_run(run.path, threads=(1,), warmup=5, runs=20)
md, _ = write_report(result, run.path)
print(md.read_text())
