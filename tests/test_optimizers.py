"""models.optimizers: LazyAdam moves only the embedding rows a batch used, as Adam would move them."""
import numpy as np
import pytest
import tensorflow as tf

from recfunnel.models.optimizers import LazyAdam, optimizer


def embedding_steps(opt, batches, rows=5, dim=2):
    """An embedding table [rows, dim] after one step per batch of ids (loss: sum of the rows)."""
    tf.keras.utils.set_random_seed(0)
    table = tf.Variable(np.arange(rows * dim, dtype=np.float32).reshape(rows, dim))
    for ids in batches:
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.gather(table, ids) * np.float32(2.0))
        grad = tape.gradient(loss, [table])
        assert isinstance(grad[0], tf.IndexedSlices)          # what an embedding lookup gives
        opt.apply_gradients(zip(grad, [table]))
    return table.numpy()


def test_the_first_step_is_adams():
    # Adam's moments start at zero: a row outside the batch has no update on the first step
    np.testing.assert_allclose(embedding_steps(LazyAdam(0.1), [[0, 3]]),
                               embedding_steps(tf.keras.optimizers.Adam(0.1), [[0, 3]]), atol=1e-5)


def test_rows_outside_the_batch_never_move():
    start = embedding_steps(LazyAdam(0.1), [])
    lazy = embedding_steps(LazyAdam(0.1), [[0, 3], [1]])
    adam = embedding_steps(tf.keras.optimizers.Adam(0.1), [[0, 3], [1]])
    np.testing.assert_allclose(lazy[[2, 4]], start[[2, 4]])
    # Adam keeps moving rows 0 and 3 on the second step by their momentum; LazyAdam does not
    after_first = embedding_steps(LazyAdam(0.1), [[0, 3]])
    np.testing.assert_allclose(lazy[[0, 3]], after_first[[0, 3]])
    assert not np.allclose(adam[[0, 3]], lazy[[0, 3]])


def test_a_row_in_every_batch_follows_adam():
    # gradient 2 each step: m = 2 (1 - b1^t), v = 4 (1 - b2^t), step lr * m_hat / sqrt(v_hat)
    # = lr * 2 / 2 = lr per step (eps aside): row 1 falls by 0.1 twice
    table = embedding_steps(LazyAdam(0.1), [[1], [1]])
    np.testing.assert_allclose(table[1], np.array([2.0, 3.0]) - 0.2, atol=1e-5)


def test_repeated_ids_in_a_batch_count_once_summed():
    # id 2 twice: its gradient rows are summed (4) before the step, which is still lr
    np.testing.assert_allclose(embedding_steps(LazyAdam(0.1), [[2, 2]]),
                               embedding_steps(tf.keras.optimizers.Adam(0.1), [[2, 2]]), atol=1e-5)


def test_dense_weights_get_adams_update():
    def dense(opt):
        w = tf.Variable([1.0, -2.0])
        for _ in range(3):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(w * w)
            opt.apply_gradients(zip(tape.gradient(loss, [w]), [w]))
        return w.numpy()
    np.testing.assert_allclose(dense(LazyAdam(0.05)), dense(tf.keras.optimizers.Adam(0.05)),
                               atol=1e-6)


def test_an_unknown_optimizer_is_named():
    assert isinstance(optimizer("lazy_adam", 0.1), LazyAdam)
    with pytest.raises(ValueError, match="models.optimizer 'sgd': choose from adam, lazy_adam"):
        optimizer("sgd", 0.1)
