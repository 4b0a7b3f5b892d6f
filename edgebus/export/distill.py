"""Quantization-aware fine-tuning distilled from the float parent.

A plain QAT fine-tune re-fits the model on the labels for a few more epochs: on ~200 images that
moves its probability scale (issue 30 measured a demo MobileNetV2 whose QAT file called 5 of 6
cancers benign at the float model's threshold while its AUC rose). The int8 file should decide what its
float parent decides, so here the fine-tune's target is the parent's own output on the same batch,
mixed with the label loss by `weight` (1.0 = the parent only, 0.0 = plain QAT):

    loss = weight * distill(parent, student) + (1 - weight) * label_loss(truth, student)

Every output is distilled, value by value (the malignancy probability, each BI-RADS descriptor,
each pixel of a lesion mask), as the squared difference of the two logits (Hinton et al. 2015's
loss in its high-temperature limit, which keeps a signal where both probabilities are near 0 or 1),
each logit clipped to +-10 (measured: +-6, about what an int8 output of step 1/256 resolves, kept
less of the parent: test-unet 0.970 against 0.978).

Two choices, measured before they were made (int8 file against its float parent):
* Parent and student run in inference mode (batch norm on its moving statistics, dropout off), as
  the file will. test-cnn, 118 synthetic cases, mean |Δp|: plain QAT 0.055, distilled with the
  student's batch norm in training mode 0.064 (its moving statistics drift to the augmented
  batches), in inference mode 0.008.
* Function matching (Beyer et al. 2022): each batch is doubled with blends of two of its frames,
  where the parent's answer lies between its two calls. On training frames a fitted parent says 0
  or 1 almost everywhere, which teaches the student nothing about the cases in between, where
  labels flip. Demo MobileNetV2, 16 test frames: flips 2 -> 0 (6 epochs); test-unet mean mask IoU
  against float 0.964 -> 0.978.
"""

from __future__ import annotations

import numpy as np

DEFAULT_WEIGHT = 1.0  # --qat-distill: the parent only
LOGIT_CLIP = 10.0
EPS = 1e-6


def _logit(tf, p):
    """The logit of a probability output, clipped to +-LOGIT_CLIP. The value is clipped, not the
    gradient: an int8 output rounds a small probability to exactly 0, where a plain clip would stop
    every gradient and leave the case stuck there."""
    p = tf.cast(p, tf.float32)
    p = p + tf.stop_gradient(tf.clip_by_value(p, EPS, 1 - EPS) - p)
    return tf.clip_by_value(tf.math.log(p) - tf.math.log1p(-p), -LOGIT_CLIP, LOGIT_CLIP)


def logit_mse(tf, p_parent, p_student):
    """Per example: the mean squared logit difference over every value of the output."""
    d = tf.square(_logit(tf, p_parent) - _logit(tf, p_student))
    axes = list(range(1, len(d.shape)))
    return tf.reduce_mean(d, axis=axes) if axes else d


def distill_fit(student, parent, ds, epochs: int, lr: float, weight: float, label_losses: list) -> dict:
    """Fine-tune `student` (the QAT model) on `ds` of (x, targets) toward `parent`'s outputs on the
    same batch and on blends of its frames. label_losses: one Keras loss per output, in output order
    (engine.losses.output_losses), applied to the real frames only. Returns the per-epoch history
    {"loss", "distill_loss", "label_loss"} (means over batches)."""
    from edgebus.compat import keras, tf

    opt = keras.optimizers.Adam(lr)
    w = float(weight)

    def as_list(v):
        return list(v) if isinstance(v, (list, tuple)) else [v]

    @tf.function
    def step(x, y):
        n = tf.shape(x)[0]
        lam = tf.random.uniform(tf.stack([n, 1, 1, 1]))
        x = tf.concat([x, lam * x + (1 - lam) * tf.gather(x, tf.random.shuffle(tf.range(n)))], 0)
        p = as_list(parent(x, training=False))
        with tf.GradientTape() as tape:
            s = as_list(student(x, training=False))
            d = tf.add_n([tf.reduce_mean(logit_mse(tf, pi, si)) for pi, si in zip(p, s)])
            lab = tf.add_n([tf.reduce_mean(f(tf.reshape(tf.cast(yi, si.dtype), tf.shape(si[:n])), si[:n]))
                            for f, yi, si in zip(label_losses, as_list(y), s)])
            total = w * d + (1 - w) * lab
            if student.losses:
                total += tf.add_n(student.losses)
        grads = tape.gradient(total, student.trainable_variables)
        opt.apply_gradients([(g, v) for g, v in zip(grads, student.trainable_variables) if g is not None])
        return total, d, lab

    hist = {"loss": [], "distill_loss": [], "label_loss": []}
    for _ in range(epochs):
        sums = np.zeros(3)
        n = 0
        for x, y in ds:
            sums += [float(v) for v in step(x, y)]
            n += 1
        for k, v in zip(hist, sums / max(n, 1)):
            hist[k].append(round(float(v), 6))
    return hist
