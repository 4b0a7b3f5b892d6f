"""Quantization-aware fine-tuning distilled from the float parent.

A plain QAT fine-tune re-fits the model on the labels for a few more epochs: on ~200 images that
moves its probability scale (measured: a demo MobileNetV2 whose QAT file called 5 of 6 cancers
benign at the float model's threshold while its AUC rose). The int8 file should decide what its
float parent decides, so here the fine-tune's target is the parent's own output on the same
(augmented) batch, mixed with the label loss by `weight` (1.0 = the parent only, 0.0 = plain QAT):

    loss = weight * distill(parent, student) + (1 - weight) * label_loss(truth, student)

Every output of the model is distilled: the malignancy probability and a BI-RADS descriptor head
by binary cross-entropy between the tempered sigmoids (Hinton et al. 2015, scaled by T^2 so the
gradient does not shrink with T), a lesion mask pixel by pixel the same way.

Parent and student both run in inference mode (batch norm on its moving statistics, dropout off),
as the file will: the fine-tune then only has to undo what quantization changed. Measured on
test-cnn (118 synthetic cases, mean |Δp| int8 vs float): plain QAT 0.055, distilled with the
student's batch norm in training mode 0.064 (its moving statistics drift to the augmented
batches), distilled in inference mode 0.008."""

from __future__ import annotations

import numpy as np

DEFAULT_WEIGHT = 1.0  # --qat-distill: the parent only (measured best on the real folds: benchmarks/results/int8-fidelity.md)
DEFAULT_TEMPERATURE = 2.0
EPS = 1e-6


def _tempered_bce(tf, temperature: float):
    """Per example: T^2 * BCE(sigmoid(z_parent / T), sigmoid(z_student / T)), z = logit of the output
    probability, averaged over every value of the output (pixels, descriptors)."""

    def loss(p_parent, p_student):
        def logit(p):
            p = tf.cast(p, tf.float32)
            # clipped for the value, not for the gradient: an int8 output rounds a small probability to exactly 0,
            # where a plain clip would stop every gradient and leave the case stuck there
            p = p + tf.stop_gradient(tf.clip_by_value(p, EPS, 1 - EPS) - p)
            return tf.math.log(p) - tf.math.log1p(-p)

        target = tf.sigmoid(logit(p_parent) / temperature)
        z = logit(p_student) / temperature
        bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=target, logits=z)
        axes = list(range(1, len(bce.shape)))
        return temperature ** 2 * (tf.reduce_mean(bce, axis=axes) if axes else bce)

    return loss


def distill_fit(student, parent, ds, epochs: int, lr: float, weight: float, label_losses: list,
                temperature: float = DEFAULT_TEMPERATURE) -> dict:
    """Fine-tune `student` (the QAT model) on `ds` of (x, targets) toward `parent`'s outputs on the
    same batch. label_losses: one Keras loss per output, in output order (compile_model's). Returns
    the per-epoch history {"loss", "distill_loss", "label_loss"} (means over batches)."""
    from edgebus.compat import keras, tf

    opt = keras.optimizers.Adam(lr)
    kd = _tempered_bce(tf, temperature)
    w = float(weight)

    def as_list(v):
        return list(v) if isinstance(v, (list, tuple)) else [v]

    @tf.function
    def step(x, y):
        p = as_list(parent(x, training=False))
        with tf.GradientTape() as tape:
            s = as_list(student(x, training=False))
            d = tf.add_n([tf.reduce_mean(kd(pi, si)) for pi, si in zip(p, s)])
            lab = tf.add_n([tf.reduce_mean(f(tf.reshape(tf.cast(yi, si.dtype), tf.shape(si)), si))
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
