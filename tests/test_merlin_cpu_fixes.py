"""Tests for workflows.merlin_cpu_fixes: each test fails when its fix is missing."""
import contextlib
import warnings

import dask
import numpy as np
import nvtabular as nvt
import pandas as pd
import pytest
from distributed import Client, LocalCluster
from merlin.core.utils import set_dask_client
from merlin.dag import Graph
from merlin.dag.executors import DaskExecutor
from merlin.dag.ops.stat_operator import StatOperator
from merlin.dag.ops.subgraph import Subgraph
from merlin.io import Dataset
from nvtabular import ops
from nvtabular.ops import join_groupby

from recfunnel.workflows import merlin_cpu_fixes

FIXES = ("joingroupby_count_float64", "dask_fit_phase_keeps_subgraph_results",
         "empty_partitions_keep_new_columns", "dcn_cross_saves_output_x0",
         "cpu_hash_ignores_row_index")

TRAIN = pd.DataFrame(
    {
        "user": ["u1", "u2", "u2", "u3", "u1", "u4"] * 4,
        "item": ["a", "a", "b", "c", "b", "a"] * 4,
        "price": [1.0, np.nan, 3.0, 3.0, 5.0, 2.0] * 4,
    }
)
# "zzz" was not seen at fit time, so the left merge in JoinGroupby gives it NaN stats.
UNSEEN = pd.DataFrame({"user": ["u1", "u9"], "item": ["a", "zzz"], "price": [1.0, 7.0]})


@contextlib.contextmanager
def _single_process(restore="auto"):
    """Fit and compute without any dask.distributed client, even if one is running."""
    set_dask_client(None)
    try:
        with dask.config.set(scheduler="synchronous"), warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Running on a single-machine scheduler")
            yield
    finally:
        set_dask_client(restore)


def _fit_joingroupby(out_path):
    feats = ["item"] >> ops.JoinGroupby(
        cont_cols=["price"], stats=["count", "mean"], out_path=str(out_path)
    )
    workflow = nvt.Workflow(feats)
    workflow.fit(Dataset(TRAIN, cpu=True))
    return workflow


def _check_joingroupby_unseen(workflow):
    out = workflow.transform(Dataset(UNSEEN, cpu=True)).to_ddf().compute()
    assert out["item_count"].dtype == np.float64
    assert out["item_count"].iloc[0] == 12  # "a" occurs 12 times in TRAIN
    assert np.isnan(out["item_count"].iloc[1]) and np.isnan(out["item_price_mean"].iloc[1])
    assert workflow.output_schema["item_count"].dtype.to_numpy == np.float64


def test_joingroupby_count_of_unseen_key_is_nan(tmp_path):
    with _single_process():
        _check_joingroupby_unseen(_fit_joingroupby(tmp_path))


def test_apply_is_idempotent():
    assert merlin_cpu_fixes.apply() == FIXES
    patched_fit_phase = DaskExecutor.fit_phase
    assert merlin_cpu_fixes.apply() == FIXES
    assert tuple(merlin_cpu_fixes.APPLIED) == FIXES
    assert DaskExecutor.fit_phase is patched_fit_phase is merlin_cpu_fixes._fit_phase
    assert join_groupby.AGG_DTYPES["count"] is np.float64


@pytest.fixture(scope="module")
def dask_client():
    # processes=True: each worker is its own interpreter, so it has the fixes only if
    # register_on_client put them there.
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster, Client(cluster) as client:
        merlin_cpu_fixes.register_on_client(client)
        set_dask_client(client)  # Merlin's global client, whatever earlier tests left set
        yield client
    set_dask_client("auto")


def _subgraph_workflow(out_path):
    # The Subgraph (with a StatOperator inside) and the "user" Categorify are fitted in the
    # same phase, in set order. Unfixed, whichever order comes up fails: Subgraph first ->
    # the user Categorify's stats go to the Subgraph and it is never finalized (KeyError
    # at transform); Subgraph last -> it is never marked fitted and the next phase
    # (Categorify of its output) raises "must be fit before attempting to use them".
    price = Subgraph("price_filled", ["price"] >> ops.FillMedian())
    price_cat = ["price"] >> price >> ops.Categorify(out_path=str(out_path))
    user_cat = ["user"] >> ops.Categorify(out_path=str(out_path))
    return nvt.Workflow(price_cat + user_cat)


def test_subgraph_fit_with_distributed_client_matches_single_process(dask_client, tmp_path):
    dataset = Dataset(TRAIN, cpu=True, npartitions=2)
    with _single_process(restore=dask_client):
        expected_wf = _subgraph_workflow(tmp_path / "single")
        expected = expected_wf.fit_transform(dataset).to_ddf().compute()

    workflow = _subgraph_workflow(tmp_path / "dask")
    workflow.fit(dataset)
    result = workflow.transform(dataset).to_ddf().compute()

    pd.testing.assert_frame_equal(result, expected)
    assert result["user"].nunique() == 4 and result["price"].nunique() == 4
    stat_nodes = Graph.get_nodes_by_op_type([workflow.output_node], StatOperator)
    assert len(stat_nodes) == 3 and all(node.op.fitted for node in stat_nodes)


def test_joingroupby_unseen_key_transformed_on_workers(dask_client, tmp_path):
    # the transform runs in the worker processes, so it needs fix (a) there
    _check_joingroupby_unseen(_fit_joingroupby(tmp_path))


def test_fixes_applied_on_current_and_future_workers(dask_client):
    def fixes_in_this_process():  # nested: pickled by value, imports nothing of ours
        from merlin.dag.executors import DaskExecutor
        from nvtabular.ops import join_groupby

        return join_groupby.AGG_DTYPES["count"].__name__, DaskExecutor.fit_phase.__module__

    expected = ("float64", "recfunnel.workflows.merlin_cpu_fixes")
    assert set(dask_client.run(fixes_in_this_process).values()) == {expected}

    # registering again replaces the plugin (no duplicate) ...
    merlin_cpu_fixes.register_on_client(dask_client)
    plugins = dask_client.run_on_scheduler(lambda dask_scheduler: [*dask_scheduler.worker_plugins])
    assert plugins.count(merlin_cpu_fixes._WORKER_PLUGIN_NAME) == 1
    # ... and a worker that joins later gets it too
    dask_client.cluster.scale(3)
    dask_client.wait_for_workers(3, timeout=60)
    assert list(dask_client.run(fixes_in_this_process).values()) == [expected] * 3


def test_an_empty_partition_keeps_the_columns_an_op_creates():
    """A Filter that empties one partition must not make later new columns vanish (fix c)."""
    import dask.dataframe as dd

    frame = pd.DataFrame({"user": [1, 2, 3, 4], "price": [1.0, 2.0, 3.0, 4.0]})
    with _single_process():
        data = Dataset(dd.from_pandas(frame, npartitions=2), cpu=True)
        keep = nvt.Workflow(["user", "price"] >> ops.Filter(f=lambda df: df["user"] > 2))
        keep.fit(data)
        filtered = Dataset(keep.transform(data).to_ddf().persist(), cpu=True)
        assert filtered.to_ddf().map_partitions(len).compute().tolist() == [0, 2]
        doubled = ["price"] >> ops.LambdaOp(lambda col: col * 2) >> ops.Rename(postfix="_x2")
        workflow = nvt.Workflow(doubled + ["user"])
        workflow.fit(filtered)
        out = workflow.transform(filtered).to_ddf().compute()
    assert out["price_x2"].tolist() == [6.0, 8.0]


@pytest.mark.training
def test_a_reloaded_dcn_scores_like_the_trained_one(tmp_path):
    """Keras reload of a depth-2 DCN must keep its cross layers' wiring (fix d)."""
    import merlin.models.tf as mm
    import tensorflow as tf
    from merlin.schema import ColumnSchema, Schema, Tags

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"u": rng.integers(0, 20, 512).astype("int32"),
                          "x": rng.standard_normal(512).astype("float32"),
                          "y": rng.integers(0, 2, 512).astype("int32")})
    schema = Schema([
        ColumnSchema("u", dtype="int32", tags=[Tags.CATEGORICAL],
                     properties={"domain": {"min": 0, "max": 19, "name": "u"}}),
        ColumnSchema("x", dtype="float32", tags=[Tags.CONTINUOUS]),
        ColumnSchema("y", dtype="int32", tags=[Tags.TARGET, Tags.BINARY_CLASSIFICATION])])
    with _single_process():
        tf.keras.utils.set_random_seed(0)
        model = mm.DCNModel(schema, depth=2, deep_block=mm.MLPBlock([8]),
                            prediction_tasks=mm.OutputBlock(schema))
        model.compile(optimizer=tf.keras.optimizers.Adam(0.05))
        model.fit(Dataset(frame, schema=schema, cpu=True), batch_size=128, epochs=2, verbose=0)
        inputs = {"u": tf.constant(frame["u"].to_numpy()[:64, None]),
                  "x": tf.constant(frame["x"].to_numpy()[:64, None])}
        first = lambda out: next(iter(out.values())) if isinstance(out, dict) else out  # noqa: E731
        before = first(model(inputs)).numpy()
        model.save(str(tmp_path / "dcn"))
        reloaded = tf.keras.models.load_model(str(tmp_path / "dcn"))
        after = first(reloaded(inputs)).numpy()
    np.testing.assert_allclose(after, before, atol=1e-5)


def test_one_unseen_id_gets_one_hash_bucket(tmp_path):
    """Categorify with hashing: the same unseen value gets the same code at every row (fix e)."""
    train = pd.DataFrame({"user": [1, 2, 3, 1]})
    later = pd.DataFrame({"user": [5, 5, 5, 7, 5]})
    with _single_process():
        workflow = nvt.Workflow(["user"] >> ops.Categorify(num_buckets=7, out_path=str(tmp_path)))
        workflow.fit(Dataset(train, cpu=True))
        codes = workflow.transform(Dataset(later, cpu=True)).to_ddf().compute()["user"].tolist()
    assert codes[0] == codes[1] == codes[2] == codes[4]
