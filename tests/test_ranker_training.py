"""Ranker training rules that need no data set: early stopping and request-time recency."""
import numpy as np

from recfunnel.models.features import NEVER_DAYS, recency_feature
from recfunnel.models.ranking import _EpochLog


class _Weights:
    """Stands in for a Keras model: the callback only reads and writes its weights."""

    def __init__(self):
        self.weights, self.stop_training = [np.zeros(1)], False

    def get_weights(self):
        return [w.copy() for w in self.weights]

    def set_weights(self, weights):
        self.weights = weights


def _run(val_aucs, patience):
    log, model = _EpochLog(monitor=["click", "like"], patience=patience), _Weights()
    log.set_model(model)
    for epoch, (click, like) in enumerate(val_aucs):
        if model.stop_training:
            break
        model.weights = [np.array([epoch + 1.0])]           # "the weights after epoch n"
        log.on_epoch_begin(epoch)
        log.on_epoch_end(epoch, {"val_click/binary_output/auc": click,
                                 "val_like/binary_output/auc": like, "loss": 0.5})
    log.on_train_end()
    return log, model


def test_early_stopping_keeps_the_epoch_with_the_best_mean_validation_auc():
    # means 0.70, 0.75 (best), 0.74, 0.72, 0.71: patience 2 stops after epoch 4
    log, model = _run([(0.70, 0.70), (0.76, 0.74), (0.75, 0.73), (0.73, 0.71), (0.72, 0.70)],
                      patience=2)
    assert [r["epoch"] for r in log.rows] == [1, 2, 3, 4]
    assert log.best_index == 1 and model.weights[0][0] == 2.0
    assert log.rows[1]["val_auc_mean"] == 0.75


def test_without_patience_the_last_epoch_is_kept():
    log, model = _run([(0.70, 0.70), (0.76, 0.74), (0.75, 0.73)], patience=0)
    assert log.best_index == 2 and model.weights[0][0] == 3.0


def test_request_time_recency_is_the_workflows_log_scaled_days():
    # last active day 100: asked on day 101 -> 1 day, day 103 -> 3; never active -> NEVER
    got = recency_feature([101, 103, 103, 5000], [100, 100, -1, 100])
    expected = np.log(np.array([1, 3, NEVER_DAYS, NEVER_DAYS], np.float32) + 1)
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == np.float32
