"""Stratified train/val/test splits and k-fold splits by case id.

Splitting by id (never by image) keeps a case out of two parts; stratifying keeps the
benign/malignant ratio the same in every part, which matters with ~250 cases. Everything is
driven by np.random.default_rng(seed), so a seed recorded in a manifest reproduces the split.
"""

from __future__ import annotations

import numpy as np

from edgebus.errors import EdgebusError


def _by_class(ids: list, labels: list) -> dict:
    ids, labels = list(ids), list(labels)
    if len(ids) != len(labels):
        raise EdgebusError(f"split: {len(ids)} ids but {len(labels)} labels; pass one label per id")
    if len(set(ids)) != len(ids):
        raise EdgebusError("split: ids are not unique; each case must appear once")
    groups: dict = {}
    for i, lab in zip(ids, labels):
        groups.setdefault(int(lab), []).append(i)
    # Sort within a class so the result depends on the set of ids, not on their input order.
    return {lab: sorted(groups[lab]) for lab in sorted(groups)}


def _counts(n: int, f_val: float, f_test: float) -> tuple[int, int]:
    n_val, n_test = round(n * f_val), round(n * f_test)
    if n >= 3:
        n_val = max(n_val, 1) if f_val > 0 else 0
        n_test = max(n_test, 1) if f_test > 0 else 0
    # Keep at least one training case per class when the class has any to spare.
    while n_val + n_test > max(n - 1, 0) and (n_val or n_test):
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    return n_val, n_test


def stratified_split(ids: list, labels: list[int], fractions=(0.8, 0.1, 0.1), seed: int = 0) -> dict[str, list]:
    """{"train", "val", "test"}: a partition of ids with each class split by `fractions`, each list sorted."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise EdgebusError(f"split: fractions {tuple(fractions)} must be three non-negative numbers summing to 1")
    _, f_val, f_test = fractions
    rng = np.random.default_rng(seed)
    out = {"train": [], "val": [], "test": []}
    for members in _by_class(ids, labels).values():
        order = [members[j] for j in rng.permutation(len(members))]
        n_val, n_test = _counts(len(members), f_val, f_test)
        out["val"] += order[:n_val]
        out["test"] += order[n_val:n_val + n_test]
        out["train"] += order[n_val + n_test:]
    return {k: sorted(v) for k, v in out.items()}


def kfold_splits(ids, labels, k: int = 5, seed: int = 0, val_fraction: float = 0.1) -> list[dict[str, list]]:
    """Stratified k-fold: the k test folds partition ids; each fold's val is drawn stratified from the rest."""
    groups = _by_class(ids, labels)
    n = sum(len(m) for m in groups.values())
    if not 2 <= k <= n:
        raise EdgebusError(f"split: k={k} folds needs 2 <= k <= number of cases ({n})")
    if not 0 <= val_fraction < 1:
        raise EdgebusError(f"split: val_fraction {val_fraction} must be in [0, 1)")
    rng = np.random.default_rng(seed)
    fold_of = {}
    pos = 0  # dealt round-robin across classes so fold sizes differ by at most one
    for members in groups.values():
        for j in rng.permutation(len(members)):
            fold_of[members[j]] = pos % k
            pos += 1
    label_of = {i: lab for lab, members in groups.items() for i in members}
    folds = []
    for f in range(k):
        test = sorted(i for i, g in fold_of.items() if g == f)
        rest = sorted(i for i, g in fold_of.items() if g != f)
        part = stratified_split(rest, [label_of[i] for i in rest], (1 - val_fraction, val_fraction, 0.0), seed + 1 + f)
        folds.append({"train": part["train"], "val": part["val"], "test": test})
    return folds
