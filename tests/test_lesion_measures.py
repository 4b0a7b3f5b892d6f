"""The cart's per-frame lesion measurements, made fast for issue #31, give exactly what the slow
versions gave: the fusion and descriptor models were fitted on those numbers. The references below
are the previous implementations, kept here verbatim."""

import numpy as np
import pytest

from edgebus.core.echo import MIN_PIXELS, echo_features
from edgebus.core.shape import shape_features
from edgebus.data.preprocess import _largest_region
from edgebus.runtime.fusion import measure_lesion


def bfs_largest_region(mask):
    """The previous _largest_region: a pixel-by-pixel search over a set (8-connected)."""
    fg = set(zip(*np.nonzero(mask)))
    best = []
    while fg:
        seed = fg.pop()
        region, todo = [seed], [seed]
        while todo:
            r, c = todo.pop()
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    n = (r + dr, c + dc)
                    if n in fg:
                        fg.remove(n)
                        region.append(n)
                        todo.append(n)
        if len(region) > len(best):
            best = region
    return np.asarray(best).T if best else None


def full_frame_echo(gray, mask):
    """The previous echo_features: every region as a full-frame boolean array."""
    g = np.asarray(gray, dtype=np.float64)
    m = np.asarray(mask) > 0
    if not m.any():
        return None
    h_all = g.shape[0]
    ys, xs = np.nonzero(m)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    half = max(1, (x1 - x0) // 2)

    def beside(shape, rows, a, b):
        out = np.zeros(shape, bool)
        out[rows, max(0, a - half):a] = True
        out[rows, b:min(shape[1], b + half)] = True
        return out

    tissue = (g > 0) & ~m
    side = beside(g.shape, slice(y0, y1), x0, x1) & tissue
    band = slice(y1, min(h_all, y1 + max(1, (y1 - y0) // 2)))
    below = np.zeros(g.shape, bool)
    below[band, x0:x1] = True
    below &= tissue
    below_side = beside(g.shape, band, x0, x1) & tissue
    lesion = g[m]
    ref = g[side].mean() if side.sum() >= MIN_PIXELS else np.nan
    posterior = (np.log((g[below].mean() + 1) / (g[below_side].mean() + 1))
                 if below.sum() >= MIN_PIXELS and below_side.sum() >= MIN_PIXELS else np.nan)
    return [float(np.log((lesion.mean() + 1) / (ref + 1))), float(posterior), float(lesion.std() / (ref + 1))]


def blobs(rng, h, w, k):
    """A smooth random map thresholded: a few irregular regions, specks and holes."""
    small = rng.random((max(2, h // 8), max(2, w // 8))).astype(np.float32)
    from PIL import Image

    big = np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR)) + 0.15 * rng.random((h, w))
    return big > np.quantile(big, 1 - k)


@pytest.mark.parametrize("seed", range(12))
def test_runs_find_the_same_largest_region(seed):
    rng = np.random.default_rng(seed)
    h, w = rng.integers(5, 170, 2)
    m = blobs(rng, h, w, rng.uniform(0.05, 0.6))
    want, got = bfs_largest_region(m), _largest_region(m)
    if want is None:
        assert got is None
        return
    assert got.shape[1] == want.shape[1]
    if set(map(tuple, got.T)) != set(map(tuple, want.T)):  # a tie: the old search kept an arbitrary one (set order)
        rest = m.copy()
        rest[tuple(want)] = False
        assert bfs_largest_region(rest).shape[1] == want.shape[1]


def test_edge_cases_of_regions():
    assert _largest_region(np.zeros((4, 4), bool)) is None
    one = np.zeros((3, 3), bool)
    one[1, 1] = True
    assert _largest_region(one).tolist() == [[1], [1]]
    diag = np.eye(5, dtype=bool)  # touching by corners only: one 8-connected region
    assert _largest_region(diag).shape == (2, 5)
    full = np.ones((2, 7), bool)
    assert _largest_region(full).shape == (2, 14)


@pytest.mark.parametrize("seed", range(8))
def test_windowed_echo_equals_full_frame(seed):
    rng = np.random.default_rng(100 + seed)
    h, w = rng.integers(40, 300, 2)
    gray = rng.integers(0, 256, (h, w)).astype(np.uint8)
    gray[:, : rng.integers(0, 10)] = 0  # a black margin: left out of the references
    m = np.zeros((h, w), np.uint8)
    y0, x0 = rng.integers(0, h - 5), rng.integers(0, w - 5)
    m[y0:y0 + rng.integers(3, h - y0 + 1), x0:x0 + rng.integers(3, w - x0 + 1)] = 1
    m &= blobs(rng, h, w, 0.7).astype(np.uint8) | (m * (rng.random((h, w)) > 0.1)).astype(np.uint8)
    np.testing.assert_allclose(echo_features(gray, m), full_frame_echo(gray, m), rtol=1e-12, atol=1e-12, equal_nan=True)


def test_lesion_measured_on_its_box_equals_the_whole_frame():
    rng = np.random.default_rng(7)
    prob = np.asarray(blobs(rng, 64, 64, 0.2), np.float32) * 0.9
    gray = rng.integers(1, 256, (300, 400)).astype(np.uint8)
    shape, echo = measure_lesion(prob, gray, 0.5)
    from edgebus.data.preprocess import lesion_in_frame

    mask = lesion_in_frame(prob, gray.shape, 0.5)
    assert shape == pytest.approx(shape_features(mask), rel=1e-12)
    np.testing.assert_allclose(echo, full_frame_echo(gray, mask), rtol=1e-12, equal_nan=True)


def sorted_set_hull(x, y):
    """The previous _hull_area: monotone chain over every distinct point."""
    pts = sorted(set(zip(x.tolist(), y.tolist())))
    if len(pts) < 3:
        return 0.0

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower, upper = [], []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    hull = np.asarray(lower[:-1] + upper[:-1], dtype=np.float64)
    return float(abs(np.dot(hull[:, 0], np.roll(hull[:, 1], 1)) - np.dot(hull[:, 1], np.roll(hull[:, 0], 1))) / 2)


@pytest.mark.parametrize("seed", range(30))
def test_hull_area_unchanged(seed):
    from edgebus.core.shape import _hull_area

    rng = np.random.default_rng(200 + seed)
    n = int(rng.integers(1, 400))
    if seed % 2:  # pixel corners of a mask at anisotropic spacing, as shape_features passes them
        x, y = rng.integers(0, 50, n) * 1.7, rng.integers(0, 50, n) * 0.6
    else:
        x, y = rng.normal(size=n), rng.normal(size=n)
    assert _hull_area(x, y) == sorted_set_hull(x, y)  # the same hull vertices in the same order: bit for bit
    m = blobs(rng, 80, 120, 0.3)
    assert shape_features(m, (400, 500)) is not None


@pytest.mark.parametrize("seed", range(6))
def test_histogram_percentiles_equal_numpy(seed):
    from edgebus.data.preprocess import uint8_percentiles

    rng = np.random.default_rng(300 + seed)
    g = rng.integers(0, 256, int(rng.integers(1, 5000))).astype(np.uint8)
    if seed % 2:
        g = np.clip(g // 7 * 7, 0, 255).astype(np.uint8)  # many ties
    for q in ([1, 99], [0, 100], [50], [2.5, 97.5], [33.3, 66.7]):
        assert uint8_percentiles(g, q) == np.percentile(g, q).tolist()  # bit for bit: the contract's stretch uses them


@pytest.mark.parametrize("seed", range(8))
def test_lesion_in_frame_windowed_equals_whole_frame(seed):
    """The previous lesion_in_frame thresholded and masked the whole frame; the window gives the same mask."""
    from PIL import Image

    from edgebus.data.preprocess import lesion_in_frame

    rng = np.random.default_rng(400 + seed)
    gh = int(rng.integers(8, 70))
    prob = (blobs(rng, gh, gh, rng.uniform(0.05, 0.5)) * rng.uniform(0.5, 1, (gh, gh))).astype(np.float32)
    h, w = (int(v) for v in rng.integers(30, 400, 2))
    got = lesion_in_frame(prob, (h, w), 0.5)
    region = bfs_largest_region(prob >= 0.5)
    if region is None:
        assert got is None
        return
    keep = np.zeros((gh, gh), bool)
    keep[region[0], region[1]] = True
    keep = np.pad(keep, 1)
    keep = np.logical_or.reduce([keep[1 + dy:keep.shape[0] - 1 + dy, 1 + dx:keep.shape[1] - 1 + dx]
                                 for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
    full = np.asarray(Image.fromarray(prob).resize((w, h), Image.BILINEAR)) >= 0.5
    rows = np.minimum((np.arange(h) + 0.5) * gh / h, gh - 1).astype(int)
    cols = np.minimum((np.arange(w) + 0.5) * gh / w, gh - 1).astype(int)
    want = full & keep[rows][:, cols]
    if not want.any():
        assert got is None
    else:
        assert np.array_equal(got, want.astype(np.uint8))
