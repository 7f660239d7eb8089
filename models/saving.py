"""How the TensorFlow models are saved: the serving signature only.

Every reader of a saved model (models.scorer, the candidate sources, the Triton stages) loads
its SavedModel's `serving_default` signature, never a Keras model. Merlin's `save` also traces
every layer's own call functions for Keras to rebuild the model from, which was half of a small
run's training time under cProfile; this writes the same signature (Keras' default one, traced
once) and Merlin's schema files, without the layer traces or the optimizer's state.
"""
from __future__ import annotations

from pathlib import Path

import tensorflow as tf
from keras.saving.legacy.saved_model import save_impl
from merlin.models.io import save_merlin_metadata
from merlin.models.tf.models.base import get_output_schema


def save_serving(model, path: str | Path, schema=None) -> None:
    """`model` (a Merlin Model or Encoder, or a MeanOfMembers of them) to `path` as a SavedModel
    with its serving signature and Merlin's input and output schemas (`schema`: the input
    schema, default the model's own)."""
    signature = save_impl.default_save_signature(model)
    tf.keras.Model.save(model, str(path), save_format="tf", include_optimizer=False,
                        save_traces=False, signatures=signature)
    save_merlin_metadata(str(path), model.schema if schema is None else schema,
                         get_output_schema(str(path)))


class MeanOfMembers(tf.keras.Model):
    """One model out of several trained alike (other seeds): per output, the mean of the
    members' probabilities in logit space. Saved by save_serving, it has the members' serving
    signature (the same input and output names), so every reader serves it unchanged."""

    EPS = 1e-7

    def __init__(self, members: list):
        super().__init__(name="mean_of_members")
        self.members = list(members)
        spec = self.members[0].save_spec()[0][0]           # the inputs of the first member
        self(tf.nest.map_structure(lambda s: tf.zeros([1, *s.shape[1:]], s.dtype), spec))

    def call(self, inputs, training=False):
        outputs = [member(inputs, training=training) for member in self.members]
        if not all(isinstance(o, dict) for o in outputs):
            raise TypeError("MeanOfMembers averages models with named outputs (a dict)")
        mean = {}
        for name in outputs[0]:
            p = tf.clip_by_value(tf.stack([o[name] for o in outputs]), self.EPS, 1 - self.EPS)
            mean[name] = tf.sigmoid(tf.reduce_mean(tf.math.log(p) - tf.math.log1p(-p), axis=0))
        return mean
