"""Losses, metrics and the optimizer of edgebus's training (engine.fit compiles with them; QAT's
distillation mixes the losses in)."""

from __future__ import annotations

from edgebus.core.tasks import get_task
from edgebus.models.registry import AUX_MASK, DESCRIPTORS_OUTPUT, output_names


def seg_loss(keras, tf):
    """Binary cross-entropy + soft Jaccard, as the study's segmentation_models setup."""

    def loss(y_true, y_pred):
        bce = keras.losses.binary_crossentropy(y_true, y_pred)
        inter = tf.reduce_sum(y_true * y_pred, axis=[1, 2, 3])
        union = tf.reduce_sum(y_true + y_pred, axis=[1, 2, 3]) - inter
        jac = 1.0 - (inter + 1.0) / (union + 1.0)
        return tf.reduce_mean(bce, axis=[1, 2]) + jac

    return loss


def iou_metric(tf):
    def iou(y_true, y_pred):
        p = tf.cast(y_pred >= 0.5, tf.float32)
        inter = tf.reduce_sum(y_true * p, axis=[1, 2, 3])
        union = tf.reduce_sum(tf.maximum(y_true, p), axis=[1, 2, 3])
        return tf.reduce_mean(tf.where(union > 0, inter / tf.maximum(union, 1.0), 1.0))

    return iou


def accuracy(keras, tf):
    """Binary accuracy with the target read at 0.5 too, named "accuracy" (KeepBest and the logs read it):
    Keras' own compares a soft (distilled) target with 0/1 and shows ~0 while the model learns; on
    hard labels the two are equal."""

    def accuracy(y_true, y_pred):
        return tf.reduce_mean(tf.cast(tf.equal(y_true > 0.5, y_pred > 0.5), tf.float32), axis=-1)

    return keras.metrics.MeanMetricWrapper(accuracy, name="accuracy")


def masked_bce(tf):
    """Binary cross-entropy over the known entries only (a descriptor the sheet leaves unknown is -1)."""

    def loss(y_true, y_pred):
        known = tf.cast(y_true >= 0, tf.float32)
        p = tf.clip_by_value(y_pred, 1e-7, 1 - 1e-7)
        t = tf.clip_by_value(y_true, 0.0, 1.0)
        bce = -(t * tf.math.log(p) + (1 - t) * tf.math.log(1 - p))
        return tf.reduce_sum(bce * known, axis=-1) / tf.maximum(tf.reduce_sum(known, axis=-1), 1.0)

    return loss


def output_losses(model, task: str) -> list:
    """The training loss of each output of `model`, in output order (QAT's distillation mixes them in)."""
    from edgebus.compat import keras, tf

    names = output_names(model)
    if len(names) > 1:  # a classifier with training heads beside malignancy
        losses = {"malignant_prob": keras.losses.binary_crossentropy, AUX_MASK: seg_loss(keras, tf),
                  DESCRIPTORS_OUTPUT: masked_bce(tf)}
        return [losses[n] for n in names]
    return [keras.losses.binary_crossentropy if get_task(task).name == "classify" else seg_loss(keras, tf)]


def decoder_weights(model) -> list:
    """The trainable weights of a multi-task model's mask decoder (its layers are named aux_*)."""
    return [w for layer in model.layers if layer.name.startswith("aux_") for w in layer.trainable_weights]


def optimizer(model, lr: float):
    """Adam at `lr`; a multi-task model built with decoder_lr_scale != 1 (registry) gets its mask
    decoder's weights updated at lr x that scale: the decoder starts from scratch beside a pretrained
    encoder that wants a small rate (a U-Net trains at 10x a classifier's rate here)."""
    from edgebus.compat import keras, tf

    scale = float(getattr(model, "decoder_lr_scale", 1.0))
    decoder = decoder_weights(model)
    if scale == 1.0 or not decoder:
        return keras.optimizers.Adam(lr)

    class DecoderScaledAdam(keras.optimizers.Adam):
        """Adam with the decoder's steps scaled (dense gradients, no amsgrad: how edgebus calls Adam)."""

        def build(self, var_list):
            super().build(var_list)
            self._scaled = {self._var_key(w) for w in decoder}

        def update_step(self, gradient, variable):
            if self._var_key(variable) not in self._scaled:
                return super().update_step(gradient, variable)
            lr = tf.cast(self.learning_rate, variable.dtype) * scale
            step = tf.cast(self.iterations + 1, variable.dtype)
            alpha = lr * tf.sqrt(1 - tf.pow(tf.cast(self.beta_2, variable.dtype), step)) / (
                1 - tf.pow(tf.cast(self.beta_1, variable.dtype), step))
            m = self._momentums[self._index_dict[self._var_key(variable)]]
            v = self._velocities[self._index_dict[self._var_key(variable)]]
            m.assign_add((gradient - m) * (1 - self.beta_1))
            v.assign_add((tf.square(gradient) - v) * (1 - self.beta_2))
            variable.assign_sub((m * alpha) / (tf.sqrt(v) + self.epsilon))

    return DecoderScaledAdam(lr)
