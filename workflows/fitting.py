"""How the dataset build fits its NVTabular workflows: Workflow.fit's phases without its last pass.

Merlin's fit learns every statistic, then runs the whole graph over the dataset's first partition
only to read the dtypes it outputs (for operators like LambdaOp that do not declare theirs). Our
operators declare their dtypes, so that pass computes the output schema Merlin would derive
anyway, at the price of a second transform of the first partition (with the build's few large
partitions, most of the data). `fit_statistics` fits the same statistics, in the same phases,
on the same executor (pandas, cuDF, one process or a dask cluster), and derives the schema.
"""
from __future__ import annotations

from merlin.dag import Graph
from merlin.dag.ops.stat_operator import StatOperator


def statistics_to_fit(graph) -> dict:
    """Each StatOperator node not yet fitted -> the StatOperator nodes it depends on."""
    return {node: Graph.get_nodes_by_op_type(node.parents_with_dependencies, StatOperator)
            for node in Graph.get_nodes_by_op_type([graph.output_node], StatOperator)
            if not node.op.fitted}


def fit_statistics(workflow, dataset):
    """Fits the workflow's unfitted statistics on `dataset` (a merlin Dataset), phase by phase
    as Workflow.fit does (a statistic that reads another's output waits for it), and computes
    the output schema; statistics fitted already (`op.fitted`) are kept as they are."""
    graph = workflow.graph
    graph.construct_schema(dataset.schema)
    pending = statistics_to_fit(graph)
    while pending:
        phase = [node for node, needs in pending.items() if not needs]
        if not phase:
            raise RuntimeError("the workflow's statistics depend on each other in a cycle")
        workflow.executor.fit_phase(dataset, phase)
        for node in phase:
            pending.pop(node)
        for needs in pending.values():
            needs.difference_update(phase)
    graph.construct_schema(dataset.schema)      # fitted state (Categorify's domains) included
    return workflow
