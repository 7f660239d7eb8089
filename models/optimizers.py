"""The optimizer every model trains with (models.optimizer): Adam, or Adam that updates only
the embedding rows a batch used.

Keras' Adam decays the moments of every row of an embedding table on every step, used or not:
with a catalogue of a million items that is the whole [items, dim] table read and written
several times per batch, more than the model's own forward and backward pass. `lazy_adam`
(as TensorFlow Addons' LazyAdam) updates the moments and weights of the rows in the batch only;
dense weights (the MLPs) get Adam's update unchanged.
"""
from __future__ import annotations

import tensorflow as tf

from recfunnel.config import OPTIMIZERS


@tf.keras.utils.register_keras_serializable("recfunnel")
class LazyAdam(tf.keras.optimizers.Adam):
    """Adam whose sparse (embedding) updates touch only the rows of the batch."""

    def update_step(self, gradient, variable):
        if not isinstance(gradient, tf.IndexedSlices) or self.amsgrad:
            return super().update_step(gradient, variable)
        # Keras has summed the gradient rows of repeated ids (unique indices) before this step
        lr = tf.cast(self.learning_rate, variable.dtype)
        step = tf.cast(self.iterations + 1, variable.dtype)
        beta_1 = tf.cast(self.beta_1, variable.dtype)
        beta_2 = tf.cast(self.beta_2, variable.dtype)
        alpha = lr * tf.sqrt(1 - tf.pow(beta_2, step)) / (1 - tf.pow(beta_1, step))
        key = self._index_dict[self._var_key(variable)]
        m, v = self._momentums[key], self._velocities[key]
        rows, values = gradient.indices, gradient.values
        m_rows = beta_1 * tf.gather(m, rows) + (1 - beta_1) * values
        v_rows = beta_2 * tf.gather(v, rows) + (1 - beta_2) * tf.square(values)
        m.scatter_update(tf.IndexedSlices(m_rows, rows))
        v.scatter_update(tf.IndexedSlices(v_rows, rows))
        variable.scatter_sub(tf.IndexedSlices(alpha * m_rows / (tf.sqrt(v_rows) + self.epsilon),
                                              rows))


def optimizer(name: str, learning_rate: float) -> tf.keras.optimizers.Optimizer:
    """The `models.optimizer` named `name` (recfunnel.config.OPTIMIZERS)."""
    kinds = {"adam": tf.keras.optimizers.Adam, "lazy_adam": LazyAdam}
    if name not in kinds or set(kinds) != set(OPTIMIZERS):
        raise ValueError(f"models.optimizer {name!r}: choose from {', '.join(OPTIMIZERS)}")
    return kinds[name](learning_rate)
