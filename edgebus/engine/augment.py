"""Training-time augmentation, in the tf.data input pipeline.

"flip" (the default since 0.1.0): a left-right mirror; lesion shape cues (taller-than-wide,
shadowing) survive it. "ultrasound": the acquisition changes of the stress benchmark at training
strength, so a model learns what must not matter: overall gain, dynamic range (gamma, contrast),
electronic noise, a softer image (Gaussian blur, sigma 0.3-1.6 px) or a coarser one (down- and
up-sampled by 0.3-0.8), less depth (the near field zoomed), another
frame aspect (black side bars), and the mirror. "scanner": "ultrasound", then another scanner's
frame geometry (width and height cut independently, or black below the image), because on BrEaST
the frame geometry alone tells malignant from benign (edgebus.data.acquisition). Written with tf.image / tf.nn ops (no extra
dependency, runs inside the same input pipeline, deterministic under the run's seed) and
independently of edgebus.data.stress's PIL implementation, so the stress benchmark does not test
a model on the exact operations it was trained with. Geometric changes move the mask with the image.
"""

from __future__ import annotations

from edgebus.config.options import OPTIONS
from edgebus.core.errors import EdgebusError, flag

AUGMENTS = OPTIONS["augment"].choices  # declared once, with the option


def augment_name(augment) -> str:
    """True / False (older configs) or a name -> the name."""
    if augment is True:
        return "flip"
    if augment is False or augment is None:
        return "none"
    if augment not in AUGMENTS:
        raise EdgebusError(f"{flag('augment')} '{augment}': choose one of {', '.join(AUGMENTS)}")
    return augment


def _p(tf, p):
    return tf.random.uniform(()) < p


def _geometric(tf, a, masks, frac_h, frac_w, pad):
    """Crop the top-centre (frac_h x frac_w) part, pad it left/right by `pad` of its width, and
    resize back: the same on the image (bilinear) and every mask (nearest)."""
    h, w = tf.shape(a)[0], tf.shape(a)[1]
    ch = tf.maximum(1, tf.cast(tf.cast(h, tf.float32) * frac_h, tf.int32))
    cw = tf.maximum(1, tf.cast(tf.cast(w, tf.float32) * frac_w, tf.int32))
    x0 = (w - cw) // 2
    side = tf.cast(tf.cast(cw, tf.float32) * pad / 2, tf.int32)

    def one(t, method):
        t = t[:ch, x0:x0 + cw]
        t = tf.pad(t, [[0, 0], [side, side], [0, 0]])
        return tf.image.resize(t, (h, w), method=method)

    return one(a, "bilinear"), [one(m, "nearest") for m in masks]


def _blur(tf, a, sigma):
    """Separable Gaussian blur of an (H, W, C) image, `sigma` in pixels of the model input: a
    lower-frequency transducer or a different focus, the change the stress benchmark found most
    harmful (3x3 averaging alone, sigma ~0.8, was too gentle to teach it)."""
    r = tf.range(-4, 5, dtype=tf.float32)
    k = tf.exp(-0.5 * tf.square(r / sigma))
    k = k / tf.reduce_sum(k)
    c = tf.shape(a)[-1]
    kx = tf.tile(tf.reshape(k, (1, 9, 1, 1)), [1, 1, c, 1])
    ky = tf.tile(tf.reshape(k, (9, 1, 1, 1)), [1, 1, c, 1])
    x = tf.nn.depthwise_conv2d(a[None], kx, (1, 1, 1, 1), "SAME")
    return tf.nn.depthwise_conv2d(x, ky, (1, 1, 1, 1), "SAME")[0]


def _lowres(tf, a, factor):
    """Down- then up-sampling by `factor` (bilinear): a coarser scan line density or a frame grabbed
    at a lower resolution."""
    h, w = tf.shape(a)[0], tf.shape(a)[1]
    small = tf.maximum(8, tf.cast(tf.cast(tf.stack([h, w]), tf.float32) * factor, tf.int32))
    return tf.image.resize(tf.image.resize(a, small, "area"), (h, w), "bilinear")


def ultrasound(tf, a, masks: list):
    """One training sample (H, W, C image in [0, 1], masks (H, W, 1)) through random acquisition changes."""
    a = tf.cond(_p(tf, 0.8), lambda: a * tf.random.uniform((), 0.7, 1.4), lambda: a)  # gain
    a = tf.clip_by_value(a, 0.0, 1.0)
    a = tf.cond(_p(tf, 0.5), lambda: tf.pow(a + 1e-6, tf.random.uniform((), 0.65, 1.5)), lambda: a)  # gamma
    mean = tf.reduce_mean(a)
    a = tf.cond(_p(tf, 0.5), lambda: mean + (a - mean) * tf.random.uniform((), 0.65, 1.45), lambda: a)  # contrast
    a = tf.cond(_p(tf, 0.3), lambda: a + tf.random.normal(tf.shape(a), 0.0, tf.random.uniform((), 0.0, 0.05)),
                lambda: a)  # noise
    a = tf.cond(_p(tf, 0.35), lambda: _blur(tf, a, tf.random.uniform((), 0.3, 1.6)), lambda: a)  # softer image
    a = tf.cond(_p(tf, 0.25), lambda: _lowres(tf, a, tf.random.uniform((), 0.3, 0.8)), lambda: a)  # coarser probe
    a = tf.clip_by_value(a, 0.0, 1.0)
    zoom = _p(tf, 0.4)
    frac = tf.where(zoom, tf.random.uniform((), 0.72, 1.0), 1.0)
    pad = tf.where(_p(tf, 0.3), tf.random.uniform((), 0.0, 0.4), 0.0)
    a, masks = _geometric(tf, a, masks, frac, frac, pad)
    flip = _p(tf, 0.5)
    a = tf.cond(flip, lambda: tf.image.flip_left_right(a), lambda: a)
    masks = [tf.cond(flip, lambda m=m: tf.image.flip_left_right(m), lambda m=m: m) for m in masks]
    return tf.clip_by_value(a, 0.0, 1.0), masks


def flip(tf, a, masks: list):
    f = _p(tf, 0.5)
    a = tf.cond(f, lambda: tf.image.flip_left_right(a), lambda: a)
    return a, [tf.cond(f, lambda m=m: tf.image.flip_left_right(m), lambda m=m: m) for m in masks]


def _pad_depth(tf, a, masks, frac):
    """Black below the image by `frac` of its height, resized back: a deeper frame than the tissue fills."""
    h, w = tf.shape(a)[0], tf.shape(a)[1]
    extra = tf.cast(tf.cast(h, tf.float32) * frac, tf.int32)

    def one(t, method):
        return tf.image.resize(tf.pad(t, [[0, extra], [0, 0], [0, 0]]), (h, w), method=method)

    return one(a, "bilinear"), [one(m, "nearest") for m in masks]


def scanner(tf, a, masks: list):
    """"ultrasound", then another scanner's frame geometry: half the time the frame is cut to 70-100%
    of its height (from the skin down) and, independently, of its width (centred), so aspect and scale
    change together as they do between scanners and presets; 30% of the time black fills up to 40% of
    the depth. The whole-frame resize then squashes the lesion differently every time, so neither the
    squash nor the depth setting stays a cue; the lesion's own shape and texture do."""
    a, masks = ultrasound(tf, a, masks)
    cut = _p(tf, 0.5)
    fh = tf.where(cut, tf.random.uniform((), 0.7, 1.0), 1.0)
    fw = tf.where(cut, tf.random.uniform((), 0.7, 1.0), 1.0)
    a, masks = _geometric(tf, a, masks, fh, fw, 0.0)
    frac = tf.where(_p(tf, 0.3), tf.random.uniform((), 0.0, 0.4), 0.0)
    a, masks = _pad_depth(tf, a, masks, frac)
    return tf.clip_by_value(a, 0.0, 1.0), masks
