"""A sensitivity-first operating point: the study calls a false "benign" the worst error, so the
decision threshold is chosen on validation data to reach a target malignant sensitivity (default
0.90), then stored in the run; export embeds it in every model and the cart runtime applies it."""

from __future__ import annotations

from edgebus.core.errors import EdgebusError
from edgebus.core.manifest import Run
from edgebus.core.metrics import classification_metrics, expected_calibration_error, threshold_for_sensitivity


def set_operating_point(run_dir, target: float = 0.9, log=print) -> dict:
    """Pick the threshold on the run's validation split, record sensitivity/specificity on val and
    test at that threshold plus calibration (ECE), and make it the run's threshold (the run's Keras
    metrics are re-stated at it)."""
    run = Run.load(run_dir)
    if run.task.name != "classify":
        raise EdgebusError(f"{run.path}: an operating point applies to classifiers; this is a {run.task.name} run")
    if not 0 < target <= 1:
        raise EdgebusError(f"--target-sensitivity {target}: give a value in (0, 1], e.g. 0.9")
    if run.manifest.exports:
        raise EdgebusError(f"{run.path}: already exported; set the operating point before 'edgebus export' "
                           "so the threshold is embedded in the models (or train a new run)")
    from edgebus.data.arrays import load_run_arrays
    from edgebus.engine.fit import predict
    from edgebus.engine.models import load_run_model

    model = load_run_model(run)
    data = load_run_arrays(run, ("val", "test"))
    (xva, yva), (xte, yte) = data["val"], data["test"]
    pva, pte = predict(model, xva).ravel(), predict(model, xte).ravel()
    op = threshold_for_sensitivity(yva, pva, target)
    thr = op["threshold"]
    test = classification_metrics(yte, pte, thr)
    result = {
        "chosen_on": "val",
        **op,
        "val_ece": expected_calibration_error(yva, pva),
        "test": {"sensitivity": test["per_class"]["malignant"]["recall"],
                 "specificity": test["per_class"]["benign"]["recall"], "accuracy": test["accuracy"],
                 "ece": expected_calibration_error(yte, pte), "n": test["n"]},
    }
    run.manifest.threshold = thr
    run.manifest.operating_point = result
    run.manifest.metrics["keras"] = {"val": classification_metrics(yva, pva, thr), "test": test}
    run.stage("operating_point", target=target)
    run.save()
    log(f"threshold {thr:.4f}: val sensitivity {op['sensitivity']:.3f}, specificity {op['specificity']:.3f}; "
        f"test sensitivity {result['test']['sensitivity']:.3f}, specificity {result['test']['specificity']:.3f} "
        f"(n={test['n']}); ECE val {result['val_ece']:.3f}, test {result['test']['ece']:.3f}")
    return result
