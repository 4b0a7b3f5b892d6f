"""Every int8 file of a run against its float32 file on all frames, from `edgebus predict` folders named
ROOT/agree-<run>-<export key> (fidelity, not accuracy, so training frames count too).

    python benchmarks/int8_agreement.py ROOT RUN [RUN ...]
"""
import csv, sys
from pathlib import Path
import numpy as np
from PIL import Image
R = Path(sys.argv[1])
def rows(d):
    return {r['file']: r for r in csv.DictReader(open(d / 'predictions.csv'))}
out = ["| model | int8 file | frames | flips b->m / m->b (at the run's threshold) | mean / max prob gap | mask IoU vs float32, mean / worst frame |", "|---|---|---|---|---|---|"]
for run in sys.argv[2:]:
    ref = rows(R / f'agree-{run}-float32')
    for f in ('int8', 'int8_ptq', 'int8_litert'):
        d = R / f'agree-{run}-{f}'
        if not d.is_dir():
            continue
        got = rows(d)
        keys = sorted(set(ref) & set(got))
        if ref[keys[0]]['prob_raw']:
            a = np.array([float(ref[k]['prob_raw']) for k in keys]); b = np.array([float(got[k]['prob_raw']) for k in keys])
            la = np.array([ref[k]['label'] for k in keys]); lb = np.array([got[k]['label'] for k in keys])
            bm = int(((la == 'benign') & (lb == 'malignant')).sum()); mb = int(((la == 'malignant') & (lb == 'benign')).sum())
            gap = np.abs(a - b)
            out.append(f"| {run} | model_{f}.tflite | {len(keys)} | {bm} / {mb} | {gap.mean():.3f} / {gap.max():.3f} | - |")
        else:
            ious = []
            for k in keys:
                ma = np.array(Image.open(ref[k]['mask_file'])) > 127; mbk = np.array(Image.open(got[k]['mask_file'])) > 127
                u = (ma | mbk).sum()
                ious.append(1.0 if u == 0 else (ma & mbk).sum() / u)
            ious = np.array(ious)
            out.append(f"| {run} | model_{f}.tflite | {len(keys)} | - | - | {ious.mean():.3f} / {ious.min():.3f} |")
print("\n".join(out))
