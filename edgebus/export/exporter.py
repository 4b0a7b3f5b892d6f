"""`edgebus export`: convert a run's Keras model to TFLite, then run every file with the
interpreter on the test split and record its metric and its agreement with the Keras parent (as
Ultralytics' exporter does).

int8's source is "qat" (quantization-aware fine-tuning, edgebus.export.int8; the default) or "ptq"
(post-training calibration only); a QAT export also writes the PTQ file (model_int8_ptq.tflite) so
the validation table compares them. Every file carries its metadata (embedded and in a sidecar
JSON), is validated next to the float Keras model, can be gated (--max-drop, --max-recall-drop), is
loaded in every installed interpreter, and each int8 file gets an offline Edge TPU readiness report.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np

from edgebus.core.errors import EdgebusError, flag
from edgebus.core.io import atomic_write, check_writable
from edgebus.core.manifest import Run
from edgebus.config.files import record_config
from edgebus.config.stages import ExportConfig
from edgebus.export.convert import convert, float_tensors, model_metadata, write_tflite
from edgebus.export.qat import QAT_MODEL
from edgebus.export.qat_reference import qat_meta, qat_reference
from edgebus.export.threshold import file_point, parent_point, rule_of
from edgebus.export.report import write_report
from edgebus.export.validate import gate_check, status_text

ORDER = ("float32", "float16", "dynamic", "int8_ptq", "int8_litert", "int8")


def write_eval_pack(run: Run, split_ids: list, x: np.ndarray, truth: np.ndarray) -> None:
    """The test split as uint8 model-input pixels + truth, so a device benchmark needs no data reader."""
    images = np.round(x[..., 0] * 255).astype(np.uint8)
    shape = images.shape if run.task.truth_is_mask else (len(x),)
    arrays = {"images": images, "case_ids": np.asarray(split_ids), run.task.pack_key: np.asarray(truth).astype(np.uint8).reshape(shape)}
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write(run.file("eval_pack.npz"), buf.getvalue())
    run.add_artifact("eval_pack.npz", "eval-pack", split="test", n=len(x))


def run_metadata(run: Run, fmt: str, source: str, point: dict | None = None, gates: dict | None = None) -> dict:
    """A file's embedded metadata; point: its own operating point (export.threshold.file_point),
    gates: its validation verdict (status, failures, limits)."""
    m = run.manifest
    op = m.operating_point or {}
    summary = {k: op[k] for k in ("target_sensitivity", "chosen_on", "source", "cross_fitted", "n") if k in op} or None
    threshold, calibration = m.threshold, m.calibration
    if point is not None:
        threshold, calibration = point["threshold"], point.get("calibration")
        summary = {k: v for k, v in point.items() if k not in ("threshold", "calibration")}
    from edgebus.core.descriptors import metadata as descriptor_metadata
    from edgebus.data.arrays import trained_on_synthetic

    heads = descriptor_metadata() if m.model.kwargs.get("descriptors") else None
    meta = model_metadata(run.task, fmt, source, m.preprocess, threshold, model=dataclasses.asdict(m.model),
                          source_run=str(run.path.resolve()), run_created=m.created, fingerprint=m.data.fingerprint,
                          calibration=calibration, operating_point=summary, descriptors=heads)
    if gates is not None:
        meta["gates"] = gates
    # what the cart tells every user of the file: a model of a synthetic set is no clinical model
    meta["training_data"] = {"synthetic": trained_on_synthetic(m.data)}
    return meta


def _export_file(run: Run, key: str, fmt: str, source: str, model, calib, io_type: str, parts: dict,
                 extra_meta: dict | None = None, sensitive_int16: int = 0) -> tuple:
    """Convert one file (metadata embedded at the run's threshold for now) and run it on the test
    (and, for a classifier, validation) part. Returns (entry, {part: outputs}, the raw flatbuffer)."""
    from edgebus.runtime.model import ExportedModel

    name, side = f"model_{key}.tflite", f"model_{key}.json"
    litert = None
    if source == "litert":  # the AI Edge quantizer on the float32 flatbuffer, same calibration images
        from edgebus.export.litert_quant import litert_int8, quantizer_version

        data, litert = litert_int8(convert(model, "float32"), calib, sensitive_int16)
        litert["version"] = quantizer_version()
    else:
        data = convert(model, fmt, calib if fmt == "int8" else None, io_type)
    meta = write_tflite(run.file(name), data, {**run_metadata(run, fmt, source), **(extra_meta or {})})
    em = ExportedModel(run.file(name), run.task)  # the loader the cart uses: metadata, contract, shapes
    out = em.predict_all(parts["test"][0])
    prob, desc = out["prob"], out["descriptors"]
    probs = {"test": prob, **{k: em.predict(parts[k][0]) for k in parts if k != "test"}}
    if out["mask"] is not None:
        probs["test_mask"] = out["mask"]
    entry = {
        "file": name, "metadata": side, "bytes": run.file(name).stat().st_size, "format": fmt, "source": source,
        "io": meta["io"], "ops": sorted(set(em.model.op_names())),
        "interpreter": f"{em.model.backend} {em.model.backend_version}",
        "xnnpack": em.model.xnnpack, "xnnpack_error": em.model.xnnpack_error, "status": "ok",
    }
    if litert is not None:
        entry["litert"] = litert
    if desc is not None:
        from edgebus.core.metrics import descriptor_metrics

        entry["descriptors"] = descriptor_metrics(parts["test"][3], desc, [d["name"] for d in em.descriptors])
    if fmt == "int8":
        left = float_tensors(em.model)
        entry["float_tensors"] = left
        if left:
            entry["status"] = "failed"
            entry["error"] = f"{name}: {len(left)} float tensors left (first: {left[0]}); not a full-integer model"
    return entry, probs, data


def _judge(run: Run, entry: dict, probs: dict, parts: dict, parent: dict, keras_probs: dict, keras_metrics: dict,
           cfg: ExportConfig) -> dict:
    """The file's own operating point, its test metrics there, its departures from the float parent
    (each at its own threshold) and the gates' verdict; returns the file's operating point."""
    task = run.task
    yte = parts["test"][1]
    point = None
    thr = parent["threshold"]
    if not task.truth_is_mask:
        point = file_point(run, entry["format"], (parts["val"][1], probs["val"]) if "val" in probs else None)
        thr = point["threshold"]
        entry["operating_point"] = point
    entry["threshold"] = thr
    entry["metrics"] = task.metrics(yte, probs["test"], thr)
    entry["agreement"] = task.agreement(keras_probs["test"], probs["test"], parent["threshold"], thr)
    entry["fidelity"] = task.fidelity(keras_probs["test"], probs["test"], parent["threshold"], thr, truth=yte)
    mask_fid = None
    if "test_mask" in probs:  # a multi-task file: its mask against the float model's and the truth
        from edgebus.core.metrics import mask_fidelity, segmentation_metrics

        mask_fid = mask_fidelity(keras_probs["test_mask"], probs["test_mask"], parent["mask_threshold"])
        seg = segmentation_metrics(parts["test"][2], probs["test_mask"], parent["mask_threshold"])
        entry["mask"] = {"threshold": parent["mask_threshold"], "iou": seg["iou"], "dice": seg["dice"],
                         "fidelity": {k: v for k, v in mask_fid.items() if k != "mask_iou_per_image"}}
    gate = gate_check(task, keras_metrics, entry["metrics"], cfg.limits(), entry["fidelity"], mask_fid)
    gate["enforced"] = entry["role"] == "deliverable"
    entry["gate"] = gate
    if not gate["passed"] and gate["enforced"] and entry["status"] == "ok":
        entry["status"] = "gate_failed"
        entry["error"] = f"{entry['file']}: failed its export gates: " + "; ".join(gate["failures"])
    return point


def _stability(run: Run, model, part: tuple, keras_prob, threshold: float) -> dict:
    """The float model against itself on its test inputs plus one gray level of Gaussian noise
    (sigma 1/255, seeded): a file cannot be held closer to its parent than the parent is to itself, and
    a parent that flips labels under this noise is too fragile for any int8 copy to follow exactly."""
    from edgebus.engine.fit import predict

    x = part[0]
    noise = np.random.default_rng(0).normal(0, 1 / 255, x.shape[:-1] + (1,))  # one gray level, the same in each channel
    noisy = np.clip(x + noise, 0, 1).astype(np.float32)
    f = run.task.fidelity(keras_prob, predict(model, noisy), threshold, threshold, truth=part[1])
    return {k: v for k, v in f.items() if k != "mask_iou_per_image"}


def _unlist_rewritten(run: Run, plan) -> None:
    """Take what this export will rewrite out of the manifest (and save it) before any file is
    written: a kill mid-way then leaves files the manifest does not list (stages refuse them as
    missing; the same command makes them again), never a listed file whose sha256 no longer matches."""
    keys = {k for k, _, _ in plan}
    files = {"eval_pack.npz", "export_report.md", "model_card.md", "model_card.json", "edgetpu_report.json",
             "edgetpu_report.md"}
    for k in keys | ({"int8_ptq"} if "int8" in keys else set()):
        e = run.manifest.exports.pop(k, None) or {}
        files |= {e.get("file"), e.get("metadata")}
    if "int8" in keys:
        files.add(QAT_MODEL)
    files.discard(None)
    files |= {n for n, a in run.manifest.artifacts.items() if a.get("source_file") in files}  # Edge TPU builds
    for name in files & set(run.manifest.artifacts):
        run.manifest.artifacts.pop(name)
    run.save()


def _finish_file(run: Run, entry: dict, raw: bytes, point: dict | None, extra_meta: dict | None) -> None:
    """Embed the final metadata (the file's own threshold and calibration, the gates' verdict), write
    the sidecar, and record both files with their sha256."""
    g = entry["gate"]
    # a comparison file that fails is marked FAILED too (bundle and predict refuse it); it only does not fail the export
    gates = {"status": "passed" if g["passed"] else "FAILED", "enforced": g["enforced"], "failures": g["failures"],
             "limits": {c["option"]: c["limit"] for c in g["checks"]}, "checked_on": f"test split, n={entry['metrics']['n']}"}
    entry["gates"] = gates
    meta = write_tflite(run.file(entry["file"]), raw, {**run_metadata(run, entry["format"], entry["source"], point, gates),
                                                        **(extra_meta or {})}, run.file(entry["metadata"]))
    entry["io"] = meta["io"]
    run.add_artifact(entry["file"], "tflite", format=entry["format"], source=entry["source"])
    run.add_artifact(entry["metadata"], "tflite-metadata", format=entry["format"], source=entry["source"])


def _edgetpu(run: Run, new: dict, compile_files: bool, log) -> list:
    """Edge TPU readiness of the new int8 files (and compilation where the compiler is installed)."""
    from edgebus.export import edgetpu as etpu

    keys = [k for k, e in new.items() if e["format"] == "int8"]
    if not keys:
        return keys
    reports = {new[k]["file"]: etpu.check_model(run.file(new[k]["file"])) for k in keys}
    compiled = {}
    if compile_files:
        for k in keys:
            c = etpu.compile_model(run.file(new[k]["file"]))
            compiled[new[k]["file"]] = c
            if "install" in c:
                log(f"{flag('edgetpu')}: {c['reason']}; skipping compilation.\n{etpu.INSTALL_HINT}")
                compiled.update({new[j]["file"]: c for j in keys})
                break
            log(f"  {c['file'] if c['compiled'] else new[k]['file'] + ': compilation failed: ' + str(c.get('error'))}")
            for name, kind in ((c.get("file"), "edgetpu-tflite"), (c.get("log"), "edgetpu-log"), (c.get("console"), "edgetpu-log")):
                if name and run.file(name).is_file():
                    run.add_artifact(name, kind, source_file=new[k]["file"])
    etpu.write_reports(run.path, reports, compiled)
    run.add_artifact("edgetpu_report.json", "edgetpu-report")
    run.add_artifact("edgetpu_report.md", "edgetpu-report")
    for k in keys:
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
    return keys


def export_run(run_dir: str | Path, cfg: ExportConfig | None = None, log=print) -> dict:
    """Export the run's model to each format, validate each file, record it all in the manifest.

    Each classifier file gets its own operating point (export.threshold), and the gates compare
    each delivered file with the float Keras model on the test split, each at its own threshold. A
    failure keeps every file, marks it FAILED (status "gate_failed", in the report, the sidecar, the
    embedded metadata and the model card: bundle and predict refuse it) and raises EdgebusError. The
    PTQ comparison file of a QAT export is gated for information only (entry["gate"]["enforced"] is
    False): QAT exists for the models PTQ hurts."""
    from edgebus.export.int8 import calibration_set

    cfg = cfg or ExportConfig()
    cfg.check()
    run = Run.load(run_dir)
    plan = cfg.plan()
    _refuse_exported(run, plan, cfg.overwrite)
    check_writable(run.path, "export writes its files into the run folder: copy the run somewhere writable")
    model, data, parts, masks = _load_inputs(run)
    xte, yte = data["test"][:2]
    _unlist_rewritten(run, plan)  # the model and data loaded: the first write is next
    write_eval_pack(run, run.read_artifact_json("split.json")["test"], xte, yte)
    parent, keras_probs, keras_metrics, mask_meta = _float_reference(run, model, parts, masks)
    stability = _stability(run, model, parts["test"], keras_probs["test"], parent["threshold"])
    calib = calibration_set(data["train"][0], cfg.calibration_images)

    results = _kept_exports(run, plan)
    qmodel, qat_info, qat_prob = None, None, None
    refs = [("model.keras (float)", "keras", keras_metrics)]
    if any(src == "qat" for _, _, src in plan):
        qmodel, qat_info, qat_prob = qat_reference(run, model, data, calib, cfg, parent["threshold"], refs, log)

    new = {}
    for key, fmt, source in plan:
        log(f"converting {key} ({source}) ...")
        extra = qat_meta(qat_info) if source == "qat" else {}
        extra.update(mask_meta)
        entry, probs, raw = _export_file(run, key, fmt, source, qmodel if source == "qat" else model, calib,
                                         cfg.io_type, parts, extra, cfg.sensitive_int16)
        entry["role"] = "comparison" if key in ("int8_ptq", "int8_litert") else "deliverable"
        point = _judge(run, entry, probs, parts, parent, keras_probs, keras_metrics, cfg)
        if source == "qat":
            entry["agreement_vs_qat_keras"] = run.task.agreement(qat_prob, probs["test"], parent["threshold"])
        _finish_file(run, entry, raw, point, extra)
        new[key] = entry
        log(f"  {entry['file']}: {entry['bytes'] / 1e6:.2f} MB, {status_text(entry)}")

    _check_runtimes(run, new, log)
    int8_keys = _edgetpu(run, new, cfg.edgetpu, log)

    results.update(new)
    run.manifest.exports = dict(sorted(results.items(), key=lambda kv: ORDER.index(kv[0]) if kv[0] in ORDER else 99))
    table = write_report(run, refs, run.manifest.exports, cfg, keras_metrics["n"], bool(int8_keys), parent, stability)
    run.stage("export", **_stage_record(run, cfg, new, len(calib), stability, qat_info))
    run.save()
    log(table)
    from edgebus.export.model_card import write_model_card

    log(f"model card: {write_model_card(run.path)}")
    _raise_if_failed(run, new)
    return run.manifest.exports


def _refuse_exported(run: Run, plan, overwrite: bool) -> None:
    """Refuse, before anything is loaded or written, to replace files this run already has unless asked to."""
    again = [k for k, _, _ in plan if k in run.manifest.exports]
    if again and not overwrite:
        raise EdgebusError(f"{run.path}: already exported ({', '.join(again)}); pass {flag('overwrite')} to replace "
                           "them")


def _load_inputs(run: Run) -> tuple:
    """(model, data, the parts its files are scored on, whether it has a mask output): the validation
    part too where the run's rule picks each file's threshold there."""
    from edgebus.data.arrays import load_run_arrays
    from edgebus.engine.models import load_run_model
    from edgebus.models.registry import has_aux_mask

    model = load_run_model(run)
    masks = has_aux_mask(model)  # a multi-task classifier: its file keeps the mask output, validated too
    scored = ("val", "test") if rule_of(run) == "val" and not run.task.truth_is_mask else ("test",)  # val: file points
    data = load_run_arrays(run, ("train", *scored), masks=masks)
    return model, data, {k: data[k] for k in scored}, masks


def _float_reference(run: Run, model, parts: dict, masks: bool) -> tuple:
    """(operating point, outputs, test metrics, mask metadata) of the float Keras model, which every file
    is judged against; a multi-task classifier's mask output is held as a reference too."""
    from edgebus.core.metrics import DEFAULT_THRESHOLD
    from edgebus.engine.fit import predict, predict_outputs
    from edgebus.models.registry import AUX_MASK

    parent = parent_point(run)
    keras_probs = {k: predict(model, parts[k][0]) for k in parts}
    mask_meta = {}
    if masks:
        keras_probs["test_mask"] = predict_outputs(model, parts["test"][0])[AUX_MASK]
        parent["mask_threshold"] = DEFAULT_THRESHOLD
        mask_meta = {"mask": {"output": AUX_MASK, "threshold": DEFAULT_THRESHOLD}}
    keras_metrics = run.task.metrics(parts["test"][1], keras_probs["test"], parent["threshold"])
    return parent, keras_probs, keras_metrics, mask_meta


def _kept_exports(run: Run, plan) -> dict:
    """The earlier exports this one leaves in place; a new int8 export replaces its comparison file and QAT
    record too."""
    results = {k: v for k, v in run.manifest.exports.items() if k not in {p[0] for p in plan}}
    if any(k == "int8" for k, _, _ in plan):
        results.pop("int8_ptq", None)
        for name in ("model_int8_ptq.tflite", "model_int8_ptq.json"):
            run.manifest.artifacts.pop(name, None)
        run.manifest.metrics.pop("keras_qat_test", None)
    return results


def _stage_record(run: Run, cfg: ExportConfig, new: dict, n_calib: int, stability: dict, qat_info: dict | None) -> dict:
    """The manifest's export stage; an int8 file this export left in place keeps the QAT record it came from."""
    stage = {"formats": list(cfg.formats), "files": list(new),
             "int8_source": cfg.int8_source if "int8" in cfg.formats else None,
             "calibration_images": int(n_calib), "io_type": cfg.io_type, "gates": cfg.limits(),
             "float_under_noise": stability,
             "edgetpu_compile": cfg.edgetpu,
             "settings": record_config(cfg)}  # the resolved settings, as a settings file (--config) holds them
    prev_stage = run.manifest.stages.get("export", {})
    if qat_info is not None:
        stage["qat"] = qat_info
    elif "int8" not in new and "qat" in prev_stage:  # the int8 file in the run still comes from that QAT
        stage["qat"] = prev_stage["qat"]
    return stage


def _check_runtimes(run: Run, new: dict, log) -> None:
    """Each new file as every installed interpreter loads it: a file one of them refuses is found here,
    not on the cart."""
    from edgebus.export.runtimes import check_files

    log("loading every file in each installed interpreter ...")
    rt = check_files([run.file(e["file"]) for e in new.values()])
    for e in new.values():
        e["runtimes"] = rt[e["file"]]


def _raise_if_failed(run: Run, new: dict) -> None:
    """Fail the export on a file that failed (it stays, marked FAILED), after every file and record is written."""
    failed = [e for e in new.values() if e["status"] != "ok"]
    if failed:
        more = f" (and {len(failed) - 1} more; see export_report.md)" if len(failed) > 1 else ""
        raise EdgebusError(f"{failed[0]['error']}{more}; files kept in {run.path}, marked FAILED: 'edgebus bundle' and "
                           f"'edgebus predict' refuse them without {flag('accept_failed_gates')}")
