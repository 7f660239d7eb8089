"""MovieLens-100K retrieval, side by side in one run on one split (issue 4, L3.2).

Protocol (RecBole's, under which its published BPR figure was measured): every rating is an
interaction; each user's interactions are cut 80/10/10 at random (`split: random_per_user` in
configs/movielens100k.yaml, RecBole's `RS: [0.8, 0.1, 0.1]` grouped by user); full ranking over
all items; a user's training (and, for test, validation) items are excluded from the ranking, as
RecBole's full-sort evaluation masks them; recall@10 and NDCG@10 averaged over the users with a
test interaction. Items never seen in training cannot be recommended by any model here and
count as misses.

Every model picks its hyper-parameters on the validation split from a small grid of equal size,
and its test figures are those of the chosen setting. Every model is fitted on the training
split only, for validation and for test alike (the test figures do not refit on train+valid),
so all rows see the same data:
  popularity     most-interacted training items
  implicit ALS   `implicit` 0.7.2 (installed only for this benchmark, outside the environment)
  implicit BPR   the same package
  EASE           closed-form linear item-item model (models.peers, Steck 2019), lambda on the grid
  item-kNN       cosine item-item neighbours (models.peers), number of neighbours on the grid
  ours: MF       Merlin Models MatrixFactorizationModelV2, in-batch negatives + logQ
  ours: 2-tower  Merlin Models TwoTowerModelV2 with the user and item features of the workflow

    make bench                                         # all benchmarks
    python benchmarks/bench_retrieval_ml100k.py        # this one (about 10 minutes on 2 cores)
    python benchmarks/bench_retrieval_ml100k.py --only ease,item_knn   # a subset, seconds
A subset run merges its rows into the existing results; the bias plot is redrawn when the test
lists of every model in the results are at hand (kept in the run folder from earlier runs).
Results: benchmarks/results/retrieval_ml100k.json and the `bench_retrieval_ml100k` section of
BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_data import machine, publish  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "retrieval_ml100k.json"
BIAS_PLOT = REPO / "benchmarks" / "results" / "retrieval_ml100k_bias.png"
PEER_PACKAGE = "implicit==0.7.2"
PEERS_DIR = Path.home() / ".cache" / "recfunnel" / "bench-peers" / "implicit-0.7.2"
RUN_NAME = "bench-ml100k"
TOP_LISTS = "bench_top10_lists.npz"     # in the run folder: each model's last test top-10 lists
K = 10
RECBOLE_BPR = {"recall@10": 0.2368, "ndcg@10": 0.2768,
               "source": "RecBole ml-100k results, BPR, RS 8:1:1 by user, full ranking"}

# Equal-sized grids (four settings each) chosen on validation recall@10.
GRIDS = {
    "implicit_als": [{"factors": f, "regularization": r, "alpha": a, "iterations": 15}
                     for f, r, a in itertools.product([32, 64], [0.05], [1.0, 10.0])],
    "implicit_bpr": [{"factors": f, "learning_rate": 0.01, "regularization": 0.01,
                      "iterations": i} for f, i in itertools.product([64, 128], [30, 60])],
    # EASE and item-kNN: the validation optimum of a wider sweep (lambda 10 to 2000, 5 to 500
    # neighbours) lies inside these grids, not at an edge.
    "ease": [{"regularization": r} for r in [50.0, 100.0, 250.0, 500.0]],
    "item_knn": [{"neighbours": n} for n in [50, 100, 200, 500]],
    "mf": [{"embedding_dim": d, "mf_learning_rate": lr}
           for d, lr in itertools.product([64, 128], [0.002, 0.005])],
    "two_tower": [{"retrieval_temperature": t, "embedding_dim": d, "retrieval_learning_rate": 0.005}
                  for t, d in itertools.product([0.1, 0.2], [32, 64])],
}
OURS_FIXED = {"embedding_dim": 64, "retrieval_epochs": 40, "mf_epochs": 40, "retrieval_patience": 4,
              "retrieval_batch_size": 1024, "eval_k": K}


def ensure_peers() -> None:
    """`implicit` goes into its own folder in the cache, never into the project environment."""
    if not (PEERS_DIR / "implicit").exists():
        print(f"installing {PEER_PACKAGE} into {PEERS_DIR} (benchmark only)", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                        str(PEERS_DIR), PEER_PACKAGE], check=True)
    sys.path.insert(0, str(PEERS_DIR))


def stale_workflow(folder: Path) -> bool:
    """The saved workflow is missing or from an older recfunnel (workflows.dataset.load_workflow
    refuses it)."""
    from recfunnel.errors import RecfunnelError
    from recfunnel.workflows.dataset import load_workflow

    try:
        load_workflow(folder)
    except (RecfunnelError, FileNotFoundError):
        return True
    return False


def build_dataset(rebuild: bool) -> Path:
    run_dir = REPO / "runs" / RUN_NAME
    if rebuild or not (run_dir / "dataset" / "test").exists() or \
            not (run_dir / "dataset" / "history").exists() or \
            stale_workflow(run_dir / "dataset" / "workflow"):      # built by an older recfunnel
        (run_dir / TOP_LISTS).unlink(missing_ok=True)       # lists of the old split
        subprocess.run([sys.executable, "-m", "recfunnel", "pipeline", "run", "--config",
                        "configs/movielens100k.yaml", "--steps", "data,dataset",
                        "--run-name", RUN_NAME], cwd=REPO, check=True)
    return run_dir / "dataset"


class Protocol:
    """The users, relevant items and exclusions of one evaluation split, in raw MovieLens ids."""

    def __init__(self, splits, split: str, label: str = "click"):
        frame = getattr(splits, split)
        seen = (splits.train,) if split == "valid" else (splits.train, splits.valid)
        positives = splits.positives(frame, label)
        self.user_rows = positives.sort_values("timestamp").drop_duplicates("user_id")
        self.users = self.user_rows["user_id"].to_numpy()
        relevant = positives.groupby("user_id")["item_id_raw"].apply(np.asarray)
        self.truth = [relevant[u] for u in self.users]
        self.exclude = splits.seen_items(label, seen, self.users)
        # categorified -> raw ids of every servable item (training items and the catalogue's
        # items without a training example, which the funnel serves too)
        items = splits.catalogue(["item_id", "item_id_raw"])
        self.raw = np.full(int(items["item_id"].max()) + 1, -1, np.int64)
        self.raw[items["item_id"].to_numpy()] = items["item_id_raw"].to_numpy()

    def score(self, top: np.ndarray) -> dict:
        """Metrics of [n_users, K] categorified ids; `_top` keeps the list in raw ids."""
        from recfunnel.topk import topk_metrics

        raw = np.where(top >= 0, self.raw[np.clip(top, 0, None)], -1)
        m = topk_metrics(raw, self.truth, K)
        return {f"recall@{K}": round(m[f"recall@{K}"], 4), f"ndcg@{K}": round(m[f"ndcg@{K}"], 4),
                "users": m["users_scored"], "_top": raw}

    def rank(self, user_vectors: np.ndarray, item_ids: np.ndarray, item_vectors: np.ndarray):
        from recfunnel.models.candidates import EmbeddingIndex

        top, _ = EmbeddingIndex(item_ids, item_vectors).search(user_vectors, K, self.exclude)
        return self.score(top)


def popularity(splits, protocols) -> dict:
    from recfunnel.models.candidates import PopularityCandidates

    start = time.perf_counter()
    pop = PopularityCandidates.fit(splits.positives(splits.train, "click")["item_id"].to_numpy())
    seconds = time.perf_counter() - start
    out = {name: p.score(pop.search(len(p.users), K, p.exclude)[0]) for name, p in protocols.items()}
    top = out["test"].pop("_top")
    out["valid"].pop("_top")
    return {"chosen": {}, "train_seconds": round(seconds, 3), **out, "_top": top}


def implicit_model(kind: str, splits, protocols) -> dict:
    import scipy.sparse as sp
    from threadpoolctl import threadpool_limits

    from implicit.cpu.als import AlternatingLeastSquares
    from implicit.cpu.bpr import BayesianPersonalizedRanking

    train = splits.positives(splits.train, "click")
    n_users = int(splits.train["user_id"].max()) + 1
    n_items = int(splits.train["item_id"].max()) + 1
    user_items = sp.csr_matrix((np.ones(len(train), np.float32),
                                (train["user_id"].to_numpy(), train["item_id"].to_numpy())),
                               shape=(n_users, n_items))
    item_ids = np.unique(train["item_id"].to_numpy())
    tried = []
    for params in GRIDS[f"implicit_{kind}"]:
        start = time.perf_counter()
        with threadpool_limits(1, "blas"):     # implicit's own advice; it uses its own threads
            if kind == "als":
                model = AlternatingLeastSquares(**params, random_state=0)
            else:
                model = BayesianPersonalizedRanking(**params, random_state=0)
            model.fit(user_items, show_progress=False)
        seconds = time.perf_counter() - start
        scores = {name: p.rank(model.user_factors[p.users], item_ids,
                               model.item_factors[item_ids]) for name, p in protocols.items()}
        tried.append({"params": params, "train_seconds": round(seconds, 2), **scores})
        print(f"  implicit {kind} {params}: valid {_shown(scores['valid'])}", flush=True)
    return _choose(tried)


def item_item(kind: str, splits, protocols) -> dict:
    from threadpoolctl import threadpool_limits

    from recfunnel.models.peers import EASE, ItemKNN

    train = splits.positives(splits.train, "click")
    shape = (int(splits.train["user_id"].max()) + 1, int(splits.train["item_id"].max()) + 1)
    tried = []
    for params in GRIDS[kind]:
        start = time.perf_counter()
        with threadpool_limits(1, "blas"):     # one core: the machine is shared
            model = (EASE if kind == "ease" else ItemKNN)(**params).fit(
                train["user_id"].to_numpy(), train["item_id"].to_numpy(), *shape)
        seconds = time.perf_counter() - start
        scores = {name: p.score(model.search(p.users, K, p.exclude)[0])
                  for name, p in protocols.items()}
        tried.append({"params": params, "train_seconds": round(seconds, 2), **scores})
        print(f"  {model}: valid {_shown(scores['valid'])}, {seconds:.1f} s", flush=True)
    return _choose(tried)


def ours(kind: str, splits, protocols, base_cfg) -> dict:
    from recfunnel.models.data import to_tensors
    from recfunnel.models.retrieval import tower_schemas, train_retrieval

    tried = []
    for params in GRIDS[kind]:
        cfg = replace(base_cfg, **{**OURS_FIXED, **params})
        with tempfile.TemporaryDirectory() as out:
            result = train_retrieval(kind, splits, cfg, Path(out), "bench")
        model = result.model
        user_schema, item_schema = tower_schemas(kind, splits, cfg)
        items = splits.catalogue(item_schema.column_names)
        # the peers' protocol: ranking over the training items (the peers know no other)
        items = items[items["item_id"].isin(splits.train["item_id"].unique())]
        item_vectors = model.candidate_encoder(to_tensors(items, item_schema)).numpy()
        scores = {}
        for name, p in protocols.items():
            query = model.query_encoder(to_tensors(p.user_rows, user_schema)).numpy()
            scores[name] = p.rank(query, items["item_id"].to_numpy(), item_vectors)
        tried.append({"params": params, "train_seconds": result.train_seconds,
                      "epochs_run": len(result.history), "best_epoch": result.best_epoch,
                      "examples_per_second": round(result.examples / result.train_seconds),
                      **scores})
        print(f"  {kind} {params}: best epoch {result.best_epoch}/{len(result.history)}, "
              f"valid {_shown(scores['valid'])}, {result.train_seconds:.0f} s", flush=True)
    return _choose(tried)


def whole_funnel(splits, protocols) -> dict:
    """The declared funnel as the pipeline trains it with configs/movielens100k.yaml on this
    benchmark's dataset (its models and evaluation steps), then run in process over the same
    users and exclusions as every other row. Like them it picks its serving setting on
    validation, from a grid of declarations of the same trained version: two-tower or
    two-tower + EASE candidates (500) -> light ranker -> heavy ranker, each with the blend's
    click/like weights x the light ranker's cut; EASE alone (no ranking stage: a stage earns
    its place only when the funnel with it is better); and EASE's top 100 -> heavy ranker
    with the fusion selector (the config's declaration, for which the rankers' cascade
    negatives are drawn: EASE's top 100) x EASE's weight. Its test figures are the chosen
    declaration's; the pipeline's own evaluation (the config's) and the stage-by-stage
    comparison are kept beside them. The funnel's EASE source scores a user from everything
    they have (for the test split: train and validation), the peer row from train alone."""
    from dataclasses import replace as with_

    from recfunnel.models.funnel import OFFLINE_FEATURES, Funnel, FunnelSettings
    from recfunnel.config import load_config
    from recfunnel.topk import topk_metrics

    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "recfunnel", "pipeline", "run", "--config",
                    "configs/movielens100k.yaml", "--steps", "models,evaluation", "-q",
                    "--set", f"run.name={RUN_NAME}"], cwd=REPO, check=True)
    seconds = round(time.perf_counter() - started, 1)
    run = REPO / "runs" / RUN_NAME
    summary = json.loads((run / "summary.json").read_text())
    base = FunnelSettings.from_config(load_config(run / "config.yaml"))
    version = run / summary["models"]["path"]
    tried = []
    # the declared funnels tried (models.funnel.FunnelSettings): the config's chain with its
    # blend and light cut varied, EASE beside the two-tower, and EASE alone (no ranking stage)
    chains = {"two-tower -> light -> heavy": {"sources": [{"name": "two_tower", "share": 1.0}]},
              "two-tower + EASE -> light -> heavy": {"sources": [
                  {"name": "two_tower", "share": 0.5}, {"name": "ease", "share": 0.5}]}}
    grid = [(chain, click, keep) for chain in chains
            for click, keep in itertools.product([0.8, 0.5], [50, 100])]
    grid.append(("EASE alone", None, None))
    # EASE's top 100 reordered by the heavy ranker, its order fused with EASE's (the fusion
    # selector, models.components): the ranker refines the stronger source instead of
    # overruling it; input_weight is EASE's share of the order
    fused = list(itertools.product([1.0, 0.8], [0.5, 0.7]))
    grid += [("EASE -> heavy (fusion)", click, weight) for click, weight in fused]
    for chain, click, keep in grid:
        if chain == "EASE alone":
            settings = with_(base, sources=[{"name": "ease", "share": 1.0}], rankers=[])
        elif chain == "EASE -> heavy (fusion)":
            settings = with_(base, sources=[{"name": "ease", "share": 1.0}], candidates_k=100,
                             blend={"click": click, "like": round(1 - click, 2)},
                             rankers=[{"name": "heavy_ranker"}], selector="fusion",
                             selector_params={"input_weight": keep})
        else:
            settings = with_(base, **chains[chain], candidates_k=500, selector="blend",
                             selector_params={},
                             blend={"click": click, "like": round(1 - click, 2)},
                             rankers=[{"name": "light_ranker", "keep": keep},
                                      {"name": "heavy_ranker"}])
        funnel = Funnel(version, settings, features=OFFLINE_FEATURES)
        scores = {}
        for name, p in protocols.items():
            users = p.user_rows["user_id_raw"].to_numpy()
            seen = (splits.train,) if name == "valid" else (splits.train, splits.valid)
            exclude = splits.seen_items("click", seen, users, "user_id_raw", "item_id_raw")
            top = funnel.recommend(users, k=K, exclude_raw=exclude).items
            m = topk_metrics(top, p.truth, K)
            scores[name] = {f"recall@{K}": round(m[f"recall@{K}"], 4),
                            f"ndcg@{K}": round(m[f"ndcg@{K}"], 4), "users": m["users_scored"],
                            "_top": top}
        params = {"funnel": chain} if click is None else {
            "funnel": chain, "blend_click": click, "blend_like": round(1 - click, 2),
            ("fusion_input_weight" if "fusion" in chain else "light_keep"): keep}
        tried.append({"params": params, "train_seconds": seconds, **scores})
        print(f"  funnel {params}: valid {_shown(scores['valid'])}, "
              f"test {_shown(scores['test'])}", flush=True)
    chosen = _choose(tried)
    evaluation = summary["evaluation"]
    shown = lambda m: {"recall@10": m["recall@10"], "ndcg@10": m["ndcg@10"],  # noqa: E731
                       "users": m["users_scored"]}
    return {**chosen, "pipeline_evaluation": {"config": "configs/movielens100k.yaml",
                                              "funnel": shown(evaluation["models"]["funnel"]),
                                              "two_tower": shown(evaluation["models"]["two_tower"])},
            "stages": evaluation["stages"]}


def _shown(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "_top"}


def _choose(tried: list[dict]) -> dict:
    best = max(tried, key=lambda t: t["valid"][f"recall@{K}"])
    top = best["test"]["_top"]
    for t in tried:
        t["valid"].pop("_top"), t["test"].pop("_top")
    return {"chosen": best["params"], "valid": best["valid"], "test": best["test"],
            "train_seconds": best["train_seconds"], "grid": tried, "_top": top}


def popularity_bias(lists: dict, splits) -> dict:
    """Each model's test top-10 lists against the training popularity (L4.3)."""
    from recfunnel.evaluation.bias import ItemPopularity, popularity_bias_summary

    train = splits.positives(splits.train, "click")["item_id_raw"].to_numpy()
    catalogue = np.unique(np.concatenate([splits.train["item_id_raw"], splits.valid["item_id_raw"],
                                          splits.test["item_id_raw"]]))
    popularity = ItemPopularity.from_interactions(train, catalogue=catalogue)
    return {name: {k: round(v, 4) if isinstance(v, float) else v
                   for k, v in popularity_bias_summary(top, popularity).items()}
            for name, top in lists.items()}


def bias_plot(lists: dict, splits) -> None:
    """Every model's concentration curve of its test top-10 lists beside the training data's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from recfunnel.evaluation.bias import concentration_curve

    train = splits.positives(splits.train, "click")["item_id_raw"].to_numpy()
    curves = {"training data": concentration_curve(train)}
    curves.update({NAMES[name]: concentration_curve(top) for name, top in lists.items()})
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, curve in curves.items():
        ax.plot(curve["share"] * 100, curve["items"], "o-", label=name,
                color="k" if name == "training data" else None,
                lw=2.5 if name == "training data" else 1.5)
    ax.set(xlabel="% of all recommendations (training data: interactions)", yscale="log",
           ylabel="distinct items that make it up",
           title="MovieLens-100K: popularity bias of the test top-10 lists")
    ax.legend(fontsize=8)
    fig.savefig(BIAS_PLOT, dpi=110, bbox_inches="tight")
    plt.close(fig)


def run(rebuild: bool, only: list[str] | None) -> dict:
    """Runs the models in `only` (all when None) and merges their rows into the last results."""
    if not only or {"implicit_als", "implicit_bpr"} & set(only):
        ensure_peers()
    dataset = build_dataset(rebuild)
    from recfunnel.models.data import Splits
    from recfunnel.config import load_config

    splits = Splits.load(dataset)
    protocols = {"valid": Protocol(splits, "valid"), "test": Protocol(splits, "test")}
    base = load_config(REPO / "configs" / "movielens100k.yaml").models
    results = {"machine": machine(), "date": time.strftime("%Y-%m-%d"),
               "command": "python benchmarks/bench_retrieval_ml100k.py", "k": K,
               "data": {"train_interactions": int(len(splits.positives(splits.train, "click"))),
                        "test_users": int(len(protocols["test"].users)),
                        "test_interactions": int(sum(len(t) for t in protocols["test"].truth))},
               "published": {"recbole_bpr": RECBOLE_BPR}, "models": {}}
    lists = {}
    runners = {"popularity": lambda: popularity(splits, protocols),
               "implicit_als": lambda: implicit_model("als", splits, protocols),
               "implicit_bpr": lambda: implicit_model("bpr", splits, protocols),
               "ease": lambda: item_item("ease", splits, protocols),
               "item_knn": lambda: item_item("item_knn", splits, protocols),
               "mf": lambda: ours("mf", splits, protocols, base),
               "two_tower": lambda: ours("two_tower", splits, protocols, base),
               "funnel": lambda: whole_funnel(splits, protocols)}
    for name, runner in runners.items():
        if only and name not in only:
            continue
        print(f"{name} ...", flush=True)
        results["models"][name] = {**runner(), "date": results["date"]}
        top = results["models"][name].pop("_top")
        if top is not None:
            lists[name] = top
        print(f"{name}: test {results['models'][name]['test']}", flush=True)
    for name, b in popularity_bias(lists, splits).items():
        results["models"][name]["popularity_bias"] = b
    drawn = list(results["models"])
    if only and RESULTS.is_file():
        results, drawn = merge_previous(results, only)
    saved = dataset.parent / TOP_LISTS
    lists = {**(dict(np.load(saved)) if saved.is_file() else {}), **lists}
    np.savez_compressed(saved, **lists)
    missing = [n for n in results["models"] if n not in lists]
    if missing:
        print(f"bias plot kept as it was: no test lists of {missing} in {saved} (a full run "
              "redraws it)", flush=True)
    else:
        drawn = list(results["models"])
        bias_plot({n: lists[n] for n in drawn}, splits)
    results["bias_plot"] = drawn
    return results


def merge_previous(results: dict, only: list[str]) -> tuple[dict, list[str]]:
    """A subset run's rows merged into the last results (the others kept with their date), and
    the models the bias plot showed then."""
    previous = json.loads(RESULTS.read_text())
    kept = {n: {"date": previous["date"], **m} for n, m in previous["models"].items()}
    kept.update(results["models"])
    merged = {**results, "models": {n: kept[n] for n in NAMES if n in kept},
              "command": results["command"] + "  (partly rerun: --only " + ",".join(only) + ")"}
    return merged, previous.get("bias_plot", list(previous["models"]))


NAMES = {"popularity": "popularity", "implicit_als": "implicit ALS (peer)",
         "implicit_bpr": "implicit BPR (peer)", "ease": "EASE (peer)",
         "item_knn": "item-kNN (peer)", "mf": "ours: matrix factorisation",
         "two_tower": "ours: two-tower", "funnel": "ours: the declared funnel chosen on validation"}


def markdown(r: dict) -> str:
    rows = ["| model | recall@10 | NDCG@10 | valid recall@10 | chosen setting | train s |",
            "|---|---|---|---|---|---|"]
    for name, m in r["models"].items():
        chosen = ", ".join(f"{k}={v}" for k, v in m["chosen"].items()) or "-"
        rows.append(f"| {NAMES[name]} | {m['test']['recall@10']:.4f} | "
                    f"{m['test']['ndcg@10']:.4f} | "
                    f"{m['valid']['recall@10'] if m.get('valid') else '-':{'.4f' if m.get('valid') else ''}} | {chosen} | "
                    f"{m['train_seconds']} |")
    pub = r["published"]["recbole_bpr"]
    rows.append(f"| RecBole BPR (published, not run here) | {pub['recall@10']} | "
                f"{pub['ndcg@10']} | | | |")
    peers = [n for n in ("implicit_als", "implicit_bpr", "ease", "item_knn") if n in r["models"]]
    verdict = ""
    if "two_tower" in r["models"] and peers:
        best = max(peers, key=lambda n: r["models"][n]["test"]["recall@10"])
        ratio = {n: r["models"]["two_tower"]["test"]["recall@10"] /
                 r["models"][n]["test"]["recall@10"] for n in peers}
        verdict = (f"Two-tower / best peer ({NAMES[best]}) recall@10 ratio: "
                   f"**{ratio[best]:.2f}**"
                   + (f"; / implicit ALS: {ratio['implicit_als']:.2f}"
                      if best != "implicit_als" and "implicit_als" in ratio else "")
                   + " (same split).")
    funnel = r["models"].get("funnel", {})
    if funnel.get("grid"):
        def setting(p: dict) -> str:
            extra = [f"click {p['blend_click']}"] if "blend_click" in p else []
            extra += [f"cut {p['light_keep']}"] if "light_keep" in p else []
            extra += [f"EASE's weight {p['fusion_input_weight']}"] \
                if "fusion_input_weight" in p else []
            return p["funnel"] + (f" ({', '.join(extra)})" if extra else "")

        chains = "; ".join(f"{setting(t['params'])}: valid {t['valid']['recall@10']}, test "
                           f"{t['test']['recall@10']} / {t['test']['ndcg@10']}"
                           for t in funnel["grid"])
        alone = next((t for t in funnel["grid"] if t["params"]["funnel"] == "EASE alone"), None)
        chosen = funnel["chosen"]
        verdict += ("\n\nThe declared funnels tried (one trained version, its rankers trained "
                    "for configs/movielens100k.yaml's declaration: their cascade negatives come "
                    "from what it hands them, so a chain that hands them another input, e.g. "
                    "the two-tower's 500, ranks with rankers fitted to EASE's top 100; chosen "
                    f"on validation recall@10; test recall@10 / NDCG@10): {chains}. Chosen: "
                    f"**{setting(chosen)}** ({funnel['test']['recall@10']} / "
                    f"{funnel['test']['ndcg@10']})")
        if alone and chosen["funnel"] != "EASE alone":
            verdict += (f", against EASE alone {alone['test']['recall@10']} / "
                        f"{alone['test']['ndcg@10']}: the ranking stage earns its place")
        elif alone:
            verdict += ": no ranking stage improves on EASE's own order on this log"
        verdict += (". The funnel's EASE source scores a test user from everything they have "
                    "(train and validation, as served); the peer row from train alone.")
    bias = ["| model | coverage | Gini | popularity lift | long-tail share |", "|---|---|---|---|---|"]
    bias += [f"| {NAMES[n]} | {m['popularity_bias']['coverage']} | {m['popularity_bias']['gini']} | "
             f"{m['popularity_bias']['popularity_lift']} | {m['popularity_bias']['long_tail_share']} |"
             for n, m in r["models"].items() if "popularity_bias" in m]
    undrawn = [NAMES[n] for n in r["models"] if n not in r.get("bias_plot", r["models"])]
    d = r["data"]
    dates = sorted({m.get("date", r["date"]) for m in r["models"].values()})
    return "\n".join([
        f"Command: `{r['command']}`. Machine: {r['machine']}. Date: {r['date']}"
        + (f" (rows measured on {', '.join(dates)}: see `date` per model in the JSON)"
           if len(dates) > 1 else "") + ".",
        f"MovieLens-100K, every rating an interaction, random 80/10/10 per user; "
        f"{d['train_interactions']:,} training interactions; test: {d['test_users']} users, "
        f"{d['test_interactions']:,} interactions; full ranking over all training items, the "
        "user's training and validation items excluded; each model's setting chosen on "
        "validation recall@10 from a grid of four.",
        "", *rows, "", verdict, "",
        "Popularity bias of the same test top-10 lists (recfunnel.evaluation.bias; the plot with "
        "every model's concentration curve beside the training data's is "
        "`benchmarks/results/retrieval_ml100k_bias.png`"
        + (f", not yet redrawn with {', '.join(undrawn)}: a full run redraws it" if undrawn
           else "") + "):", "", *bias])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rebuild", action="store_true", help="rebuild the ML-100K dataset")
    parser.add_argument("--only", nargs="*", help=f"rerun a subset of {list(NAMES)} (names "
                        "separated by commas or spaces); the others keep their last results")
    args = parser.parse_args()
    only = [n for arg in args.only for n in arg.split(",") if n] if args.only else None
    unknown = sorted(set(only or []) - set(NAMES))
    if unknown:
        parser.error(f"--only takes model names from {list(NAMES)}, got {unknown}")
    results = run(args.rebuild, only)
    publish(results, markdown(results), RESULTS, "bench_retrieval_ml100k", write=True)


if __name__ == "__main__":
    main()
