"""Where each model's training time goes: the fit's phases per model, per training input.

Trains each model of the funnel (the project's own train_retrieval / train_ranker, as
benchmarks/bench_training.py does) on the demo run's dataset for a fixed number of epochs,
once per `models.training_input` (Merlin's Loader, the in-memory tf.data batches), in one
process, and splits the fit's wall time into the first training step (tracing the train
function, and the feed's start), the other steps, the per-epoch validation (Keras' evaluate
for the rankers, the full-catalogue recall callback for retrieval) and the rest (Keras' own
work between steps and epochs). Beside it, the feed alone: one epoch of batches from Merlin's
Loader and from tf.data without a model. Results go to benchmarks/results/training_profile.json
(one entry per --label) and the `training_profile` section of BENCHMARKS.md.

    python benchmarks/profile_training.py [--models two_tower mf light_ranker heavy_ranker]
        [--inputs merlin_loader memory] [--epochs 3] [--threads INTRA INTER] [--label NAME]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_data import machine, publish  # noqa: E402
from benchmarks.bench_training import INPUTS, MODELS, dataset_for, measure  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "training_profile.json"


def feed_seconds(name: str, splits, cfg, source: str) -> float:
    """Seconds for one epoch of `name`'s training batches from the `source` feed alone."""
    from merlin.models.tf import Loader

    from recfunnel.models.data import to_batches, to_dataset
    from recfunnel.models.ranking import ranker_schema
    from recfunnel.models.retrieval import tower_schemas

    if name in ("two_tower", "mf"):
        frame = splits.positives(splits.train, cfg.retrieval_positive)
        user, item = tower_schemas(name, splits, cfg)
        schema, batch = user + item, cfg.retrieval_batch_size
    else:
        frame, batch = splits.train, cfg.ranker_batch_size
        schema = ranker_schema(splits, cfg, name.removesuffix("_ranker"))
    data = Loader(to_dataset(frame, schema), batch_size=batch, shuffle=True) \
        if source == "merlin_loader" else to_batches(frame, schema, batch)
    start = time.perf_counter()
    for _ in data:
        pass
    return round(time.perf_counter() - start, 3)


def run(config: Path, models: list[str], inputs: list[str], epochs: int, label: str,
        threads: list[int] | None = None) -> dict:
    import tensorflow as tf

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads[0])
        tf.config.threading.set_inter_op_parallelism_threads(threads[1])
    import recfunnel.workflows  # noqa: F401  (Merlin fixes)
    from recfunnel.models.data import Splits

    dataset, full = dataset_for(config)
    cfg = replace(full.models, retrieval_epochs=epochs, mf_epochs=epochs, ranker_epochs=epochs,
                  retrieval_patience=0, ranker_patience=0)
    splits = Splits.load(dataset)
    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            for source in inputs:
                row = measure(name, splits, replace(cfg, training_input=source), Path(tmp))
                row["other_seconds"] = round(row["train_seconds"] - row["first_step_seconds"]
                                             - row["steps_seconds"] - row["validation_seconds"], 2)
                row["feed_epoch_seconds"] = feed_seconds(name, splits, cfg, source)
                rows.append(row)
                print(json.dumps(row), flush=True)
    return {"label": label, "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M"),
            "load_average_1min": {"before": round(load_before, 2),
                                  "after": round(os.getloadavg()[0], 2)},
            "tensorflow_threads": {
                "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                "inter_op": tf.config.threading.get_inter_op_parallelism_threads()},
            "optimizer": cfg.optimizer, "epochs": epochs, "rows": rows}


def markdown(runs: list[dict]) -> str:
    out = ["Command: `python benchmarks/profile_training.py`: each model trained by the "
           "project's own training function on the demo data set, once per training input, one "
           "process, fixed epochs without early stopping. The fit's wall time split into its "
           "first step (tracing the train function, and the feed's start), the other steps, "
           "the per-epoch validation and the rest (Keras between steps and epochs); `feed s` is "
           "one epoch of the input's batches alone, without a model. Examples/s (fit) includes "
           "all of it, as `recfunnel train` reports it; (steps) the training steps' alone."]
    for r in runs:
        threads = r["tensorflow_threads"]
        out += ["", f"**{r['label']}** ({r['date']}; {r['machine']}; optimizer {r['optimizer']}, "
                f"{r['epochs']} epochs; TF threads intra/inter {threads['intra_op']}/"
                f"{threads['inter_op']} (0: TF's default, one per core); 1-minute load before "
                f"/ after {r['load_average_1min']['before']} / "
                f"{r['load_average_1min']['after']})", "",
                "| model | input | batch | examples/s (fit) | examples/s (steps) | fit s | "
                "first step s | steps s | validation s | other s | feed s (1 epoch) |",
                "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for x in r["rows"]:
            out.append(f"| {x['model']} | {x['input']} | {x['batch_size']:,} | "
                       f"{x['examples_per_second']:,} | {x['step_examples_per_second']:,} | "
                       f"{x['train_seconds']} | {x['first_step_seconds']} | "
                       f"{x['steps_seconds']} | {x['validation_seconds']} | "
                       f"{x['other_seconds']} | {x['feed_epoch_seconds']} |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "default.yaml")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--inputs", nargs="+", default=["merlin_loader", "memory"],
                        choices=INPUTS)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs=2, metavar=("INTRA", "INTER"),
                        help="TensorFlow's intra- and inter-op thread pools (default: TF's)")
    parser.add_argument("--label", default="profile")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    result = run(args.config, args.models, args.inputs, args.epochs, args.label, args.threads)
    runs = json.loads(RESULTS.read_text()) if RESULTS.is_file() else []
    runs = [r for r in runs if r["label"] != result["label"]] + [result]
    publish(runs, markdown(runs), RESULTS, "training_profile", write=not args.no_write)


if __name__ == "__main__":
    main()
