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


def save_serving(model, path: str | Path) -> None:
    """`model` (a Merlin Model or Encoder) to `path` as a SavedModel with its serving signature
    and Merlin's input and output schemas."""
    signature = save_impl.default_save_signature(model)
    tf.keras.Model.save(model, str(path), save_format="tf", include_optimizer=False,
                        save_traces=False, signatures=signature)
    save_merlin_metadata(str(path), model.schema, get_output_schema(str(path)))
