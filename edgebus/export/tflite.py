"""Convert a run's Keras model to TFLite, then run every file with the interpreter on the test
split and record its metric and its agreement with the Keras parent (as Ultralytics' exporter does).

int8 is full-integer: calibrated on training images, TFLITE_BUILTINS_INT8 only, uint8 (or int8)
input/output, a batch-1 static graph (no SHAPE/STRIDED_SLICE ops; the Edge TPU needs static
shapes), and checked to hold no float tensor. Its source is "qat" (quantization-aware fine-tuning
with tfmot, edgebus/export/qat.py; the default) or "ptq" (post-training calibration only); a QAT
export also writes the PTQ file (model_int8_ptq.tflite) so the validation table compares them.

Every file carries its metadata (embedded and in a sidecar JSON), is validated on the test split
next to the float Keras model, can be gated (--max-drop, --max-recall-drop), is loaded in every
installed interpreter, and each int8 file gets an offline Edge TPU readiness report
(edgebus/export/edgetpu.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgebus import __version__
from edgebus.errors import EdgebusError
from edgebus.metrics import agreement, task_metrics
from edgebus.rundir import Run, atomic_write, write_json
from edgebus.runtime.interpreter import TFLiteModel
from edgebus.runtime.metadata import METADATA_NAME

FORMATS = ("float32", "float16", "dynamic", "int8")
INT8_SOURCES = ("qat", "ptq")
LABELS = ["benign", "malignant"]


def _converter(tf, model):
    """A converter for the model's batch-1 graph (static shapes: no SHAPE/STRIDED_SLICE ops).

    The trackable is a bare tf.Module holding the variables, not the Keras model: given the model,
    the converter first saves it whole as a SavedModel (about 40 s for the U-Net); the output is
    byte-identical either way."""
    shape = [1, *model.input_shape[1:]]
    fn = tf.function(lambda x: model(x, training=False)).get_concrete_function(tf.TensorSpec(shape, tf.float32))
    holder = tf.Module()
    holder.model_variables = list(model.variables)
    return tf.lite.TFLiteConverter.from_concrete_functions([fn], holder)


def convert(model, fmt: str, calibration: np.ndarray | None = None, io_type: str = "uint8") -> bytes:
    """Keras model -> TFLite flatbuffer bytes in format `fmt`."""
    from edgebus.compat import tf

    conv = _converter(tf, model)
    if fmt == "float16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif fmt == "dynamic":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    elif fmt == "int8":
        if calibration is None or not len(calibration):
            raise EdgebusError("int8 export needs calibration images from the run's training split")

        def representative():
            # a 0..1 ramp first pins the input range to exactly [0, 1]: uint8 input = raw pixels (scale 1/255)
            yield [np.broadcast_to(np.linspace(0, 1, calibration.shape[2], dtype=np.float32)[None, :, None],
                                   calibration.shape[1:])[None].copy()]
            for x in calibration:
                yield [x[None].astype(np.float32)]

        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = representative
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = {"uint8": tf.uint8, "int8": tf.int8}[io_type]
        conv.inference_output_type = conv.inference_input_type
    elif fmt != "float32":
        raise EdgebusError(f"unknown format '{fmt}'; choose from {', '.join(FORMATS)}")
    return conv.convert()


def embed_metadata(tflite: bytes, meta: dict) -> bytes:
    """Add `meta` as JSON under the name 'edgebus' in the flatbuffer's metadata list."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite))
    buf = schema.BufferT()
    buf.data = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    model.buffers.append(buf)
    md = schema.MetadataT()
    md.name = METADATA_NAME
    md.buffer = len(model.buffers) - 1
    model.metadata = (model.metadata or []) + [md]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def float_tensors(m: TFLiteModel) -> list[str]:
    """Names of float tensors left in a model (an int8 model should have none)."""
    return [t["name"] for t in m.interpreter.get_tensor_details() if np.dtype(t["dtype"]).kind == "f"]


def _io_details(m: TFLiteModel) -> dict:
    def d(t):
        scale, zero = t["quantization"]
        return {"shape": [int(s) for s in t["shape"]], "dtype": np.dtype(t["dtype"]).name,
                "scale": float(scale), "zero_point": int(zero)}

    return {"input": d(m.input), "output": d(m.outputs[0])}


def model_metadata(run: Run, fmt: str, source: str) -> dict:
    """What a lone .tflite needs to be used correctly on a cart."""
    task = run.task
    return {
        "edgebus_version": __version__,
        "task": task,
        "format": fmt,
        "source": source,  # "float" / "ptq" / "qat"
        "labels": LABELS if task == "classify" else ["background", "lesion"],
        "output": "malignant probability" if task == "classify" else "lesion probability per pixel",
        "threshold": run.manifest.get("threshold", 0.5),
        "preprocess": run.manifest["preprocess"],
        "model": run.manifest["model"],
        "source_run": str(run.path.resolve()),
        "run_created": run.manifest["created"],
        "data_fingerprint": run.manifest["data"]["fingerprint"],
    }


def load_run_arrays(run: Run, parts=("train", "test")) -> dict:
    """The run's own split, preprocessed with the run's own contract."""
    from edgebus.data.breast import read_breast
    from edgebus.training.train import load_split_data

    ds = read_breast(run.manifest["data"]["root"])
    from edgebus.data.breast import fingerprint

    if fingerprint(ds) != run.manifest["data"]["fingerprint"]:
        raise EdgebusError(
            f"{ds.root}: data changed since the run was trained (fingerprint differs); retrain or restore the data"
        )
    split = json.loads(run.verify_artifact("split.json").read_text())
    by_id = {c.case_id: c for c in ds.lesions()}
    return load_split_data(by_id, {k: split[k] for k in parts}, run.manifest["preprocess"], run.task, run_boxes(run))


def run_boxes(run: Run) -> dict | None:
    """A lesion-crop run's val/test boxes (boxes.json; the train part uses the true masks)."""
    if "crop" not in run.manifest.get("preprocess", {}):
        return None
    raw = json.loads(run.verify_artifact("boxes.json").read_text())["boxes"]
    return {int(k): v for k, v in raw.items()}


def write_eval_pack(run: Run, split_ids: list, x: np.ndarray, y: np.ndarray) -> None:
    """The test split as uint8 pixels + truth, so benchmarks on a device need no data reader."""
    import io

    images = np.round(x[..., 0] * 255).astype(np.uint8)
    buf = io.BytesIO()
    arrays = {"images": images, "case_ids": np.asarray(split_ids)}
    arrays["labels" if run.task == "classify" else "masks"] = np.asarray(y).astype(np.uint8).reshape(len(x), *(() if run.task == "classify" else images.shape[1:]))
    np.savez_compressed(buf, **arrays)
    atomic_write(run.file("eval_pack.npz"), buf.getvalue())
    run.add_artifact("eval_pack.npz", "eval-pack", split="test", n=len(x))


def plan_exports(formats, int8_source: str = "qat") -> list[tuple[str, str, str]]:
    """(manifest key, format, source) of every file an export writes, in table order.

    int8 from QAT writes two files: the PTQ comparison ("int8_ptq", model_int8_ptq.tflite) and the
    QAT deliverable ("int8", model_int8.tflite); with --ptq, "int8" is the PTQ file."""
    if int8_source not in INT8_SOURCES:
        raise EdgebusError(f"int8 source '{int8_source}': choose qat or ptq")
    plan = []
    for f in formats:
        if f not in FORMATS:
            raise EdgebusError(f"unknown format '{f}'; choose from {', '.join(FORMATS)}")
        if f == "int8" and int8_source == "qat":
            plan += [("int8_ptq", "int8", "ptq"), ("int8", "int8", "qat")]
        else:
            plan.append((f, f, "ptq" if f == "int8" else "float"))
    seen, out = set(), []
    for p in plan:
        if p[0] not in seen:
            seen.add(p[0])
            out.append(p)
    return out


def gate_check(task: str, ref: dict, got: dict, max_drop: float | None, max_recall_drop: float | None) -> dict:
    """Compare a file's test metrics with the float Keras model's.

    Classifiers: accuracy and malignant recall drops in percentage points (1.0 = one point).
    Segmenters: IoU drop as a fraction (0.01); --max-recall-drop does not apply."""
    checks, failures = [], []
    if task == "classify":
        items = [("accuracy", "accuracy", "--max-drop", max_drop),
                 ("malignant_recall", "malignant recall", "--max-recall-drop", max_recall_drop)]
        scale, unit = 100.0, "points"
    else:
        items = [("iou", "IoU", "--max-drop", max_drop)]
        scale, unit = 1.0, ""
    for key, label, opt, limit in items:
        drop = (ref[key] - got[key]) * scale
        ok = limit is None or drop <= limit + 1e-9
        checks.append({"metric": key, "drop": round(drop, 4), "unit": unit or "iou", "limit": limit, "option": opt, "passed": ok})
        if not ok:
            amount = f"{drop:.1f} {unit}" if unit else f"{drop:.3f}"
            failures.append(f"{label} dropped {amount} (> {opt} {limit:g})")
    if task != "classify" and max_recall_drop is not None:
        checks.append({"metric": "malignant_recall", "option": "--max-recall-drop", "limit": max_recall_drop,
                       "passed": True, "note": "not applicable to a segmenter"})
    return {"passed": not failures, "checks": checks, "failures": failures}


def _fmt(v, nd=3):
    return "-" if v is None else f"{v:.{nd}f}"


def validation_table(task: str, refs: list[tuple[str, str, dict]], entries: dict) -> str:
    """Markdown: the float (and QAT) Keras references, then every exported file, same columns."""
    if task == "classify":
        head = ["model", "source", "MB", "accuracy", "malignant recall", "benign recall", "AUC",
                "Δacc (pts)", "Δrecall (pts)", "label agreement", "max Δp", "status"]
    else:
        head = ["model", "source", "MB", "IoU", "Dice", "pixel acc", "ΔIoU", "pixel agreement", "mean Δp", "status"]
    ref = refs[0][2]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cells(name, source, size, m, agree, status):
        if task == "classify":
            pc = m["per_class"]
            row = [name, source, size, _fmt(m["accuracy"]), _fmt(pc["malignant"]["recall"]), _fmt(pc["benign"]["recall"]),
                   _fmt(m["auc"]), f"{(m['accuracy'] - ref['accuracy']) * 100:+.1f}",
                   f"{(m['malignant_recall'] - ref['malignant_recall']) * 100:+.1f}",
                   _fmt(agree.get("label_agreement")) if agree else "-", _fmt(agree.get("max_abs_diff")) if agree else "-", status]
        else:
            row = [name, source, size, _fmt(m["iou"]), _fmt(m["dice"]), _fmt(m["pixel_accuracy"]),
                   f"{m['iou'] - ref['iou']:+.3f}", _fmt(agree.get("pixel_agreement")) if agree else "-",
                   _fmt(agree.get("mean_abs_diff"), 4) if agree else "-", status]
        return "| " + " | ".join(row) + " |"

    for name, source, m in refs:
        lines.append(cells(name, source, "-", m, None, "reference" if m is ref else "-"))
    for e in entries.values():
        status = e["status"] + (" (comparison)" if e.get("role") == "comparison" else "")
        lines.append(cells(e["file"], e.get("source", "-"), f"{e['bytes'] / 1e6:.2f}", e["metrics"], e["agreement"], status))
    return "\n".join(lines)


def _export_file(run: Run, key: str, fmt: str, source: str, model, calib, io_type: str, xte, yte, ref_prob,
                 thr: float, extra_meta: dict | None = None) -> dict:
    """Convert one file, embed its metadata, write the sidecar, validate it on the test split."""
    name, side = f"model_{key}.tflite", f"model_{key}.json"
    meta = model_metadata(run, fmt, source)
    meta.update(extra_meta or {})
    raw = convert(model, fmt, calib if fmt == "int8" else None, io_type)
    atomic_write(run.file(name), raw)  # first without metadata to read the I/O details
    meta["io"] = _io_details(TFLiteModel(run.file(name)))
    atomic_write(run.file(name), embed_metadata(raw, meta))
    write_json(run.file(side), meta)
    m = TFLiteModel(run.file(name))
    prob = m.predict(xte)
    entry = {
        "file": name, "metadata": side, "bytes": run.file(name).stat().st_size, "format": fmt, "source": source,
        "io": meta["io"], "ops": sorted(set(m.op_names())),
        "metrics": task_metrics(run.task, yte, prob, thr),
        "agreement": agreement(run.task, ref_prob, prob, thr),
        "interpreter": f"{m.backend} {m.backend_version}",
        "xnnpack": m.xnnpack, "xnnpack_error": m.xnnpack_error,
    }
    if fmt == "int8":
        left = float_tensors(m)
        entry["float_tensors"] = left
        if left:
            entry["status"] = "failed"
            entry["error"] = f"{name}: {len(left)} float tensors left (first: {left[0]}); not a full-integer model"
    entry.setdefault("status", "ok")
    entry["_prob"] = prob
    run.add_artifact(name, "tflite", format=fmt, source=source)
    run.add_artifact(side, "tflite-metadata", format=fmt, source=source)
    return entry


def _run_qat(run: Run, model, xtr, ytr, xte, epochs: int, lr: float | None, batch: int | None, log) -> tuple:
    """Quantization-aware copy of `model`, fine-tuned on the training split, saved and reload-checked."""
    from edgebus.export import qat
    from edgebus.training.train import predict

    train_stage = run.manifest.get("stages", {}).get("train", {})
    lr = lr if lr is not None else 0.1 * float(train_stage.get("lr", 1e-3))
    batch = batch or int(train_stage.get("batch", 16))
    plan = qat.annotate_plan(model)
    if plan:
        kinds = sorted(set(plan.values()))
        log(f"QAT: custom quantize configs for {len(plan)} layers ({', '.join(kinds)})")
    qmodel = qat.quantize(model)
    rng = np.random.default_rng(1)
    qat.calibrate_ranges(qmodel, xtr[rng.permutation(len(xtr))[:100]], batch)
    log(f"QAT: fine-tuning {epochs} epochs at lr {lr:g}, batch {batch}, on {len(xtr)} training images ...")
    info = qat.fine_tune(qmodel, run.task, xtr, ytr, epochs, lr, batch, seed=int(run.manifest.get("split", {}).get("seed", 0)))
    info["custom_configs"] = plan
    qat.save_qat_model(qmodel, run.file(qat.QAT_MODEL))
    # the saved file, not the object in memory, is what a later session has: prove it reloads the same
    again = qat.load_qat_model(run.file(qat.QAT_MODEL))
    k = min(len(xte), 2)
    diff = float(np.abs(predict(qmodel, xte[:k]) - predict(again, xte[:k])).max()) if k else 0.0
    if diff > 1e-4:
        raise EdgebusError(f"{run.file(qat.QAT_MODEL)}: reloaded QAT model differs from the trained one (max {diff:.2g}); re-run the export")
    info["reload_max_abs_diff"] = diff
    run.add_artifact(qat.QAT_MODEL, "keras-qat-model", epochs=epochs, lr=lr)
    log(f"QAT: {info['wall_s']} s; saved {qat.QAT_MODEL} (reloads inside quantize_scope)")
    return qmodel, info


PROFILE_KEYS = {"target", "formats", "int8_source", "io_type", "calibration_images", "qat_epochs", "qat_lr",
                "max_drop", "max_recall_drop", "edgetpu"}


def load_profile(path: str | Path) -> dict:
    """An export profile (export/<target>.toml): option values for one deployment target."""
    import tomllib

    path = Path(path)
    try:
        prof = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise EdgebusError(f"{path}: profile not found; see export/README.md for the shipped ones") from None
    except tomllib.TOMLDecodeError as e:
        raise EdgebusError(f"{path}: not valid TOML ({e}); fix the file") from None
    unknown = sorted(set(prof) - PROFILE_KEYS)
    if unknown:
        raise EdgebusError(f"{path}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(PROFILE_KEYS))}")
    bad = [f for f in prof.get("formats", []) if f not in FORMATS]
    if bad:
        raise EdgebusError(f"{path}: unknown format(s) {', '.join(bad)}; choose from {', '.join(FORMATS)}")
    return prof


def export_run(run_dir: str | Path, formats=("float32", "int8"), calibration_images: int = 100,
               io_type: str = "uint8", overwrite: bool = False, log=print, *, int8_source: str = "qat",
               qat_epochs: int = 3, qat_lr: float | None = None, qat_batch: int | None = None,
               max_drop: float | None = None, max_recall_drop: float | None = None, edgetpu: bool = False) -> dict:
    """Export the run's model to each format, validate each file, record it all in the manifest.

    int8_source "qat" (default) fine-tunes a quantization-aware copy for `qat_epochs` at `qat_lr`
    (default: a tenth of the training lr) and writes model_int8.tflite from it, plus the PTQ
    model_int8_ptq.tflite for comparison; "ptq" writes model_int8.tflite by calibration only.
    Gates compare each delivered file with the float Keras model on the test split; a failure keeps
    every file, records status "gate_failed" and raises EdgebusError. The PTQ comparison file of a
    QAT export is gated for information only (entry["gate"]["enforced"] is False): QAT exists for
    the models PTQ hurts. `edgetpu` also compiles the int8 files with edgetpu_compiler where it is
    installed (else says how to install it)."""
    run = Run.load(run_dir)
    if io_type not in ("uint8", "int8"):
        raise EdgebusError(f"io type '{io_type}': choose uint8 or int8")
    plan = plan_exports(formats, int8_source)
    done = run.manifest.get("exports", {})
    again = [k for k, _, _ in plan if k in done]
    if again and not overwrite:
        raise EdgebusError(f"{run.path}: already exported ({', '.join(again)}); pass --overwrite to replace them")
    if calibration_images < 1 and any(f == "int8" for _, f, _ in plan):
        raise EdgebusError(f"--calibration-images {calibration_images}: int8 needs at least 1 calibration image")

    from edgebus.training.train import load_model, predict

    model = load_model(run.verify_artifact("model.keras"))
    data = load_run_arrays(run)
    xtr, ytr = data["train"]
    xte, yte = data["test"]
    split = json.loads(run.file("split.json").read_text())
    write_eval_pack(run, split["test"], xte, yte)
    thr = run.manifest.get("threshold", 0.5)
    keras_prob = predict(model, xte)
    keras_metrics = task_metrics(run.task, yte, keras_prob, thr)
    rng = np.random.default_rng(0)
    calib = xtr[rng.permutation(len(xtr))[:calibration_images]]

    results = {k: v for k, v in done.items() if k not in {p[0] for p in plan}}
    prev_stage = run.manifest.get("stages", {}).get("export", {})
    redo_int8 = any(k == "int8" for k, _, _ in plan)
    if redo_int8:  # a new int8 export replaces its comparison file and QAT record too
        results.pop("int8_ptq", None)
        for name in ("model_int8_ptq.tflite", "model_int8_ptq.json"):
            run.manifest["artifacts"].pop(name, None)
        run.manifest["metrics"].pop("keras_qat_test", None)
    qmodel, qat_info, qat_prob = None, None, None
    refs = [("model.keras (float)", "keras", keras_metrics)]
    if any(src == "qat" for _, _, src in plan):
        qmodel, qat_info = _run_qat(run, model, xtr, ytr, xte, qat_epochs, qat_lr, qat_batch, log)
        qat_prob = predict(qmodel, xte)
        qat_metrics = task_metrics(run.task, yte, qat_prob, thr)
        run.manifest["metrics"]["keras_qat_test"] = qat_metrics
        refs.append(("model_qat.h5 (QAT Keras)", "qat", qat_metrics))

    new = {}
    for key, fmt, source in plan:
        log(f"converting {key} ({source}) ...")
        extra = {}
        if source == "qat":
            extra["qat"] = {"epochs": qat_info["epochs"], "lr": qat_info["lr"], "keras_model": "model_qat.h5"}
        entry = _export_file(run, key, fmt, source, qmodel if source == "qat" else model, calib, io_type,
                             xte, yte, keras_prob, thr, extra)
        entry["role"] = "comparison" if key == "int8_ptq" else "deliverable"
        if source == "qat":
            entry["agreement_vs_qat_keras"] = agreement(run.task, qat_prob, entry["_prob"], thr)
        entry.pop("_prob")
        gate = gate_check(run.task, keras_metrics, entry["metrics"], max_drop, max_recall_drop)
        gate["enforced"] = entry["role"] == "deliverable"
        entry["gate"] = gate
        if not gate["passed"] and gate["enforced"] and entry["status"] == "ok":
            entry["status"] = "gate_failed"
            entry["error"] = f"{entry['file']}: " + "; ".join(gate["failures"])
        new[key] = entry
        log(f"  {entry['file']}: {entry['bytes'] / 1e6:.2f} MB, status {entry['status']}")

    # runtime compatibility: every new file in every installed interpreter
    from edgebus.export import edgetpu as etpu
    from edgebus.export.runtimes import check_files

    log("loading every file in each installed interpreter ...")
    rt = check_files([run.file(e["file"]) for e in new.values()])
    for e in new.values():
        e["runtimes"] = rt[e["file"]]

    # Edge TPU readiness of the int8 files (and compilation where the compiler is installed)
    int8_keys = [k for k, e in new.items() if e["format"] == "int8"]
    if int8_keys:
        reports = {new[k]["file"]: etpu.check_model(run.file(new[k]["file"])) for k in int8_keys}
        compiled = {}
        if edgetpu:
            for k in int8_keys:
                c = etpu.compile_model(run.file(new[k]["file"]))
                compiled[new[k]["file"]] = c
                if "install" in c:
                    log(f"--edgetpu: {c['reason']}; skipping compilation.\n{etpu.INSTALL_HINT}")
                    compiled.update({new[j]["file"]: c for j in int8_keys})
                    break
                log(f"  {c['file'] if c['compiled'] else new[k]['file'] + ': compilation failed: ' + str(c.get('error'))}")
                for name, kind in ((c.get("file"), "edgetpu-tflite"), (c.get("log"), "edgetpu-log"), (c.get("console"), "edgetpu-log")):
                    if name and run.file(name).is_file():
                        run.add_artifact(name, kind, source_file=new[k]["file"])
        etpu.write_reports(run.path, reports, compiled)
        run.add_artifact("edgetpu_report.json", "edgetpu-report")
        run.add_artifact("edgetpu_report.md", "edgetpu-report")
        for k in int8_keys:
            e = new[k]
            e["edgetpu"] = {**etpu.summary(reports[e["file"]]), "report": "edgetpu_report.json"}
            if e["file"] in compiled:
                e["edgetpu"]["compile"] = {x: compiled[e["file"]].get(x) for x in
                                           ("compiled", "file", "log", "console", "error", "reason", "ops_on_edgetpu", "ops_on_cpu")
                                           if compiled[e["file"]].get(x) is not None}
            r = reports[e["file"]]
            log(f"  Edge TPU: {e['file']}: " + ("fully mappable" if r["fully_mappable"] else
                                                f"first unmappable op #{r['first_unmappable']['index']} {r['first_unmappable']['op']} "
                                                f"({r['ops_on_edgetpu']}/{r['n_ops']} ops on the Edge TPU)"))

    results.update(new)
    order = {k: i for i, k in enumerate(["float32", "float16", "dynamic", "int8_ptq", "int8"])}
    results = dict(sorted(results.items(), key=lambda kv: order.get(kv[0], 99)))
    run.manifest["exports"] = results
    run.manifest["metrics"]["keras_test"] = keras_metrics

    table = validation_table(run.task, refs, results)
    rt_lines = [f"- {e['file']}: " + "; ".join(f"{k}: {v['status']}" + (f" ({v['error']})" if v.get("error") else "")
                                               for k, v in e.get("runtimes", {}).items()) for e in results.values()]
    gates = f"--max-drop {max_drop if max_drop is not None else 'off'}, --max-recall-drop {max_recall_drop if max_recall_drop is not None else 'off'}"
    md = [f"# Export validation: {run.manifest['model']['name']} ({run.task})", "",
          f"Test split, n={keras_metrics['n']}, threshold {thr}; Δ against the float Keras model. Gates: {gates}.", "",
          table, "", "## Interpreters", ""] + rt_lines
    if int8_keys:
        md += ["", "## Edge TPU", "", "See edgetpu_report.md."]
    atomic_write(run.file("export_report.md"), "\n".join(md) + "\n")
    run.add_artifact("export_report.md", "export-report")
    stage = {"formats": list(formats), "files": list(new), "int8_source": int8_source if "int8" in formats else None,
             "calibration_images": int(len(calib)), "io_type": io_type,
             "gates": {"max_drop": max_drop, "max_recall_drop": max_recall_drop}, "edgetpu_compile": edgetpu}
    if qat_info is not None:
        stage["qat"] = qat_info
    elif not redo_int8 and "qat" in prev_stage:  # the int8 file in the run still comes from that QAT
        stage["qat"] = prev_stage["qat"]
    run.stage("export", **stage)
    run.save()
    log(table)

    failed = [e for e in new.values() if e["status"] != "ok"]
    if failed:
        first = failed[0]
        more = f" (and {len(failed) - 1} more; see export_report.md)" if len(failed) > 1 else ""
        raise EdgebusError(f"{first['error']}{more}; files kept in {run.path} for inspection")
    return results
