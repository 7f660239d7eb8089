"""Training throughput (examples/s) of every model of the funnel on this CPU.

Trains each model on the demo run's dataset (`make demo` builds it; this script builds it when
missing) for a fixed number of epochs at two batch sizes, one process, and records examples per
second (training examples x epochs / fit seconds, per-epoch validation included as in a real
run), parameters and embedding memory. Retrieval examples are positive pairs; ranker examples
are every row, sampled negatives included.

    make bench
    python benchmarks/bench_training.py [--config configs/default.yaml] [--batch-sizes 1024 4096]
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
EPOCHS = 2


def dataset_for(config: Path) -> tuple[Path, object]:
    from recfunnel.config import load_config
    from recfunnel.pipeline import run_dir_for

    cfg = load_config(config)
    run_dir = REPO / run_dir_for(cfg)
    if not (run_dir / "dataset" / "train").is_dir():
        subprocess.run([sys.executable, "-m", "recfunnel", "pipeline", "run", "--config",
                        str(config), "--steps", "data,dataset"], cwd=REPO, check=True)
    return run_dir / "dataset", cfg


def run(config: Path, batch_sizes: list[int]) -> dict:
    import recfunnel.workflows  # noqa: F401  (Merlin fixes)
    from recfunnel.models.funnel import FunnelSettings
    from recfunnel.models.train import train_all

    dataset, cfg = dataset_for(config)
    rows = []
    load_before = os.getloadavg()[0]
    for batch in batch_sizes:
        models_cfg = replace(cfg.models, retrieval_epochs=EPOCHS, mf_epochs=EPOCHS,
                             ranker_epochs=EPOCHS, retrieval_patience=0,
                             retrieval_batch_size=batch, ranker_batch_size=batch)
        with tempfile.TemporaryDirectory() as out:
            section = train_all(dataset, Path(out), models_cfg, FunnelSettings.from_config(cfg),
                                progress=False,
                                only=("two_tower", "mf", "light_ranker", "heavy_ranker"))
        for name, m in section["models"].items():
            rows.append({"model": name, "batch_size": batch, "epochs": EPOCHS,
                         "examples_per_second": m["examples_per_second"],
                         "train_seconds": m["train_seconds"], "parameters": m["parameters"],
                         "embedding_megabytes": m["embedding_megabytes"]})
            print(json.dumps(rows[-1]), flush=True)
    summary = json.loads((dataset.parent / "summary.json").read_text())
    return {"machine": machine(), "date": time.strftime("%Y-%m-%d"),
            "load_average_1min": {"before": round(load_before, 2),
                                  "after": round(os.getloadavg()[0], 2)},
            "command": f"python benchmarks/bench_training.py --config {config}",
            "data": {"events": summary["data"]["events"], "splits": summary["dataset"]["splits"]},
            "rows": rows}


def markdown(r: dict) -> str:
    table = ["| model | batch | examples/s | train s (2 epochs) | parameters | embedding MB |",
             "|---|---|---|---|---|---|"]
    for x in r["rows"]:
        table.append(f"| {x['model']} | {x['batch_size']:,} | {x['examples_per_second']:,} | "
                     f"{x['train_seconds']} | {x['parameters']:,} | {x['embedding_megabytes']} |")
    return "\n".join([
        f"Command: `{r['command']}`. Machine: {r['machine']}. Date: {r['date']}.",
        f"Data: the demo data set ({r['data']['events']:,} events; dataset rows "
        f"{r['data']['splits']}). Retrieval examples are positive pairs, ranker examples every "
        "training row; the time includes the per-epoch validation, as in a real run. "
        f"1-minute load average before / after: {r['load_average_1min']['before']} / "
        f"{r['load_average_1min']['after']} (2 cores: above 1 means other jobs shared the CPU; "
        "rerun on an idle machine for clean absolute figures).",
        "", *table])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "default.yaml")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1024, 4096])
    args = parser.parse_args()
    results = run(args.config, args.batch_sizes)
    publish(results, markdown(results), RESULTS, "bench_training", write=True)


if __name__ == "__main__":
    main()
