"""Keeping the best epoch (L3.2): the early stopping both retrieval and the rankers train with.

Keras' EarlyStopping puts back the best weights only when it stopped the training itself; this
callback keeps every epoch's row, stops after `patience` epochs without a better score and, at
the end, restores the best epoch's weights (without patience the last epoch is kept).
"""
from __future__ import annotations

import time

import tensorflow as tf


class KeepBestEpoch(tf.keras.callbacks.Callback):
    """Subclasses build each epoch's row and hand it over with `keep(row, score)`; a None score
    is never better than a real one (the first epoch is kept until a real one comes)."""

    def __init__(self, patience: int = 0):
        super().__init__()
        self.patience = patience
        self.rows: list[dict] = []
        self.best_index = -1
        self._best_score = None
        self._best_weights = None
        self._start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def seconds(self) -> float:
        """Seconds since this epoch began."""
        return time.perf_counter() - self._start

    def keep(self, row: dict, score: float | None) -> None:
        self.rows.append(row)
        if self.best_index < 0 or (score is not None and
                                   (self._best_score is None or score > self._best_score)):
            self.best_index, self._best_score = len(self.rows) - 1, score
            if self.patience > 0:
                self._best_weights = self.model.get_weights()
        elif self.patience > 0 and len(self.rows) - 1 - self.best_index >= self.patience:
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.patience > 0 and self._best_weights is not None:
            self.model.set_weights(self._best_weights)
        else:
            self.best_index = len(self.rows) - 1    # without patience the last epoch is kept
