"""Training throughput (examples/s) of every model of the funnel on this CPU.

Trains each model on the demo run's dataset (`make demo` builds it; this script builds it when
missing) with the project's own training functions, one process, per training input
(`models.training_input`: Merlin's Loader, the default, and the in-memory tf.data batches) and
batch size, for the config's epochs (a real run; `--epochs N` for a fixed number, without
early stopping). Records examples per second two ways: the fit's (training examples x epochs
/ fit seconds: the first step's tracing and the per-epoch validation included, as
`recfunnel train` reports it) and the training steps' alone (batch / mean step seconds
after the first), with the first step's and the validation's seconds and the 1-minute load
average around each model. Retrieval examples are positive pairs; ranker examples are every
training row, sampled negatives included (the rankers train on the splits' rows: the demo's
config draws no cascade negatives). benchmarks/profile_training.py splits the time further.

    make bench
    python benchmarks/bench_training.py [--config configs/default.yaml] [--batch-sizes 1024 4096]
        [--inputs memory merlin_loader] [--epochs N]
Results: benchmarks/results/training.json and the `bench_training` section of BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_data import machine, publish  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "training.json"
MODELS = ("two_tower", "mf", "light_ranker", "heavy_ranker")
INPUTS = ("memory", "merlin_loader")


def dataset_for(config: Path) -> tuple[Path, object]:
    from recfunnel.config import load_config
    from recfunnel.pipeline import run_dir_for

    cfg = load_config(config)
    run_dir = REPO / run_dir_for(cfg)
    if not (run_dir / "dataset" / "train").is_dir():
        subprocess.run([sys.executable, "-m", "recfunnel", "pipeline", "run", "--config",
                        str(config), "--steps", "data,dataset"], cwd=REPO, check=True)
    return run_dir / "dataset", cfg


def phase_timer():
    """A Keras callback (put it last) that times the first training step (the train function's
    tracing), the other steps and what follows an epoch's last step (Keras' validation, then
    the callbacks before this one: the retrieval recall)."""
    import tensorflow as tf

    class PhaseTimer(tf.keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.first_step = self.steps = self.validation = 0.0
            self.n_steps = 0
            self._t = self._last_step_end = 0.0

        def on_train_batch_begin(self, batch, logs=None):
            self._t = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            now = time.perf_counter()
            if self.n_steps == 0:
                self.first_step = now - self._t
            else:
                self.steps += now - self._t
            self.n_steps += 1
            self._last_step_end = now

        def on_epoch_end(self, epoch, logs=None):
            self.validation += time.perf_counter() - self._last_step_end

    return PhaseTimer()


def train_one(name: str, splits, cfg, out: Path, callbacks: list):
    """Trains model `name` of MODELS with the project's own training function."""
    from recfunnel.models.ranking import light_features, train_ranker
    from recfunnel.models.retrieval import train_retrieval

    if name in ("two_tower", "mf"):
        return train_retrieval(name, splits, cfg, out, "bench", callbacks=callbacks)
    kind = name.removesuffix("_ranker")
    features = light_features(cfg, splits.schema.column_names) if kind == "light" else \
        cfg.heavy_ranker_features
    return train_ranker(kind, splits, cfg, out, "bench", features=features, callbacks=callbacks)


def measure(name: str, splits, cfg, out: Path) -> dict:
    """One model's training: its throughputs and where the fit's seconds went."""
    timer = phase_timer()
    load = os.getloadavg()[0]
    result = train_one(name, splits, cfg, out, [timer])
    batch = cfg.retrieval_batch_size if name in ("two_tower", "mf") else cfg.ranker_batch_size
    steady = timer.steps / max(timer.n_steps - 1, 1)
    return {"model": name, "input": cfg.training_input, "batch_size": batch,
            "epochs": len(result.history), "examples": result.examples,
            "examples_per_second": round(result.examples / max(result.train_seconds, 1e-9)),
            "step_examples_per_second": round(batch / max(steady, 1e-9)),
            "train_seconds": result.train_seconds,
            "first_step_seconds": round(timer.first_step, 2),
            "steps_seconds": round(timer.steps, 2),
            "validation_seconds": round(timer.validation, 2),
            "parameters": result.parameters,
            "embedding_megabytes": round(sum(t["megabytes"] for t in result.embedding_tables), 3),
            "load_average_1min": [round(load, 2), round(os.getloadavg()[0], 2)]}


def run(config: Path, batch_sizes: list[int], inputs: list[str], epochs: int | None) -> dict:
    import tensorflow as tf

    import recfunnel.workflows  # noqa: F401  (Merlin fixes)
    from recfunnel.models.data import Splits

    dataset, cfg = dataset_for(config)
    splits = Splits.load(dataset)
    fixed = {} if epochs is None else {"retrieval_epochs": epochs, "mf_epochs": epochs,
                                       "ranker_epochs": epochs, "retrieval_patience": 0,
                                       "ranker_patience": 0}
    rows = []
    load_before = os.getloadavg()[0]
    for batch in batch_sizes:
        for source in inputs:
            models_cfg = replace(cfg.models, **fixed, training_input=source,
                                 retrieval_batch_size=batch, ranker_batch_size=batch)
            with tempfile.TemporaryDirectory() as out:
                for name in MODELS:
                    rows.append(measure(name, splits, models_cfg, Path(out)))
                    print(json.dumps(rows[-1]), flush=True)
    summary = json.loads((dataset.parent / "summary.json").read_text())
    command = " ".join(["python benchmarks/bench_training.py", *sys.argv[1:]])
    return {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M"),
            "load_average_1min": {"before": round(load_before, 2),
                                  "after": round(os.getloadavg()[0], 2)},
            "tensorflow_threads": {
                "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                "inter_op": tf.config.threading.get_inter_op_parallelism_threads()},
            "optimizer": cfg.models.optimizer, "epochs": epochs or "the config's",
            "command": command,
            "data": {"events": summary["data"]["events"], "splits": summary["dataset"]["splits"]},
            "rows": rows}


def markdown(r: dict) -> str:
    table = ["| model | input | batch | epochs | examples/s (fit) | examples/s (steps) | "
             "fit s | first step s | steps s | validation s | parameters | embedding MB | "
             "load |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for x in r["rows"]:
        table.append(
            f"| {x['model']} | {x['input']} | {x['batch_size']:,} | {x['epochs']} | "
            f"{x['examples_per_second']:,} | {x['step_examples_per_second']:,} | "
            f"{x['train_seconds']} | {x['first_step_seconds']} | {x['steps_seconds']} | "
            f"{x['validation_seconds']} | {x['parameters']:,} | {x['embedding_megabytes']} | "
            f"{x['load_average_1min'][0]}-{x['load_average_1min'][1]} |")
    threads = r["tensorflow_threads"]
    return "\n".join([
        f"Command: `{r['command']}`. Machine: {r['machine']}. Date: {r['date']}.",
        f"Data: the demo data set ({r['data']['events']:,} events; dataset rows "
        f"{r['data']['splits']}); epochs: {r['epochs']} (retrieval without early stopping, "
        f"rankers with the config's patience); optimizer {r['optimizer']}; TensorFlow threads "
        f"intra/inter-op {threads['intra_op']}/{threads['inter_op']} (0: TF's default, one per "
        "core). Retrieval examples are positive pairs, ranker examples every training row. "
        "Examples/s (fit) is training examples x epochs / fit seconds, the first step's "
        "tracing and the per-epoch validation included, as `recfunnel train` reports it; "
        "examples/s (steps) is the training steps' alone, after the first. `load` is the "
        "1-minute load average before-after each model (2 cores: above 1, other jobs shared "
        f"the CPU); before / after the whole run {r['load_average_1min']['before']} / "
        f"{r['load_average_1min']['after']}.",
        "", *table])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "default.yaml")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--inputs", nargs="+", default=list(INPUTS), choices=INPUTS)
    parser.add_argument("--epochs", type=int, default=None,
                        help="a fixed number of epochs, no early stopping (default: the config's)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    results = run(args.config, args.batch_sizes, args.inputs, args.epochs)
    publish(results, markdown(results), RESULTS, "bench_training", write=not args.no_write)


if __name__ == "__main__":
    main()
