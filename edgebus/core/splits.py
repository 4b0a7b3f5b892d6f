"""Stratified train/val/test splits and k-fold splits by case id.

Splitting by id (never by image) keeps a case out of two parts; stratifying keeps the
benign/malignant ratio the same in every part, which matters with ~250 cases. Everything is
driven by np.random.default_rng(seed), so a seed recorded in a manifest reproduces the split.

Content groups (cases whose image files or decoded pixels are identical, found by
edgebus.data.content) are split as one unit, and every split is checked for a leak by hash.
"""

from __future__ import annotations

import numpy as np

from edgebus.core.errors import EdgebusError
from edgebus.core.metrics import CLASS_NAMES


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


# --- content groups and leak checks --------------------------------------------------------------


def content_groups(hashes: dict[int, dict]) -> list[list[int]]:
    """Case ids grouped by identical content (same file bytes or same pixels), sorted; a unique
    image is a group of one."""
    parent = {i: i for i in hashes}

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for kind in ("file", "pixels"):
        first: dict = {}
        for i in sorted(hashes):
            h = hashes[i][kind]
            if h in first:
                a, b = find(first[h]), find(i)
                parent[max(a, b)] = min(a, b)
            else:
                first[h] = i
    groups: dict = {}
    for i in sorted(hashes):
        groups.setdefault(find(i), []).append(i)
    return [groups[k] for k in sorted(groups)]


def duplicates(groups: list[list[int]], label_of: dict) -> list[dict]:
    """Groups of more than one case, with their labels; `conflict` when identical images disagree."""
    out = []
    for g in groups:
        if len(g) > 1:
            labels = [CLASS_NAMES[label_of[i]] for i in g]
            out.append({"case_ids": g, "labels": labels, "conflict": len(set(labels)) > 1})
    return out


def _expand(part: dict, members: dict) -> dict:
    return {k: sorted(i for rep in v for i in members[rep]) for k, v in part.items()}


def grouped_split(cases, groups, fractions=(0.8, 0.1, 0.1), seed: int = 0) -> dict:
    """stratified_split over content groups (one representative each, labelled as its first case),
    so identical images land in the same part. Without duplicates it equals stratified_split."""
    label_of = {c.case_id: c.label for c in cases}
    members = {g[0]: g for g in groups}
    part = stratified_split(list(members), [label_of[r] for r in members], fractions, seed)
    return _expand(part, members)


def grouped_kfold(cases, groups, k: int = 5, seed: int = 0, val_fraction: float = 0.1) -> list[dict]:
    """kfold_splits over content groups: the k test folds partition the cases; identical images
    share a fold. Without duplicates it equals kfold_splits."""
    label_of = {c.case_id: c.label for c in cases}
    members = {g[0]: g for g in groups}
    folds = kfold_splits(list(members), [label_of[r] for r in members], k, seed, val_fraction)
    return [_expand(f, members) for f in folds]


def merge_groups(*groupings: list[list[int]]) -> list[list[int]]:
    """The finest grouping in which every group of every grouping stays whole (connected components),
    each group sorted, groups in order of their first id."""
    parent: dict = {}

    def find(i):
        parent.setdefault(i, i)
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for grouping in groupings:
        for g in grouping:
            for i in g:
                a, b = find(g[0]), find(i)
                parent[max(a, b)] = min(a, b)
    out: dict = {}
    for i in sorted(parent):
        out.setdefault(find(i), []).append(i)
    return [out[k] for k in sorted(out)]


def group_kfold(cases, groups: list[list[int]], k: int = 5, seed: int = 0, val_fraction: float = 0.1) -> list[dict]:
    """k folds whose test parts never split a group (e.g. every case of one scanner setting), with
    fold sizes and malignant counts as even as whole groups allow: each group, largest first (ties
    in seeded random order), goes to the fold where it leaves sizes and malignant counts closest to
    their targets. Each fold's val part is drawn stratified from its other cases."""
    label_of = {c.case_id: int(c.label) for c in cases}
    if sorted(i for g in groups for i in g) != sorted(label_of):
        raise EdgebusError("split: the groups must hold every case exactly once")
    if not 2 <= k <= len(groups):
        raise EdgebusError(f"split: k={k} folds of whole groups needs 2 <= k <= number of groups ({len(groups)}); "
                           "use fewer folds or group by case")
    if not 0 <= val_fraction < 1:
        raise EdgebusError(f"split: val_fraction {val_fraction} must be in [0, 1)")
    rng = np.random.default_rng(seed)
    order = [groups[j] for j in rng.permutation(len(groups))]
    order.sort(key=len, reverse=True)  # stable: equal sizes keep the seeded order
    n_target = len(label_of) / k
    m_target = max(sum(label_of.values()) / k, 1.0)
    n, m, fold_of = np.zeros(k), np.zeros(k), {}
    for g in order:
        gm = sum(label_of[i] for i in g)
        cost = ((n + len(g) - n_target) / n_target) ** 2 + ((m + gm - m_target) / m_target) ** 2 - \
               ((n - n_target) / n_target) ** 2 - ((m - m_target) / m_target) ** 2
        f = int(np.argmin(cost))
        n[f], m[f] = n[f] + len(g), m[f] + gm
        for i in g:
            fold_of[i] = f
    folds = []
    for f in range(k):
        test = sorted(i for i, g in fold_of.items() if g == f)
        rest = sorted(i for i, g in fold_of.items() if g != f)
        if not test or len({label_of[i] for i in rest}) < 2:
            raise EdgebusError(f"split: fold {f + 1} of {k} came out empty or one-class in training; use fewer folds")
        part = stratified_split(rest, [label_of[i] for i in rest], (1 - val_fraction, val_fraction, 0.0), seed + 1 + f)
        folds.append({"train": part["train"], "val": part["val"], "test": test})
    return folds


def leaks(split: dict, hashes: dict[int, dict]) -> list[dict]:
    """Content hashes found in more than one part of a split (should be empty)."""
    seen: dict = {}
    for part, ids in split.items():
        for i in ids:
            for kind in ("file", "pixels"):
                seen.setdefault((kind, hashes[i][kind]), {}).setdefault(part, []).append(i)
    return [{"hash": f"{kind}:{h[:16]}", "parts": parts} for (kind, h), parts in seen.items() if len(parts) > 1]


def check_split(split: dict, hashes: dict, where: str) -> None:
    found = leaks(split, hashes)
    if found:
        ex = found[0]
        raise EdgebusError(f"{where}: {len(found)} image(s) sit in two split parts by content hash "
                           f"(e.g. {ex['hash']} in {ex['parts']}); report this as a bug")


def content_summary(hashes: dict, groups: list, label_of: dict) -> dict:
    dups = duplicates(groups, label_of)
    return {"images": len(hashes), "unique": len(groups), "duplicate_groups": dups,
            "label_conflicts": sum(d["conflict"] for d in dups), "hash": "sha256 of file bytes and of decoded pixels"}
