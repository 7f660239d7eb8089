"""The run's HTML report: one self-contained page beside `summary.json`, plots embedded.

Each summary section has a renderer here; a section without one is shown as its JSON, so a new
part of the pipeline appears in the report before it has pictures of its own.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

import matplotlib.pyplot as plt

from recfunnel.experiments.report import render_experiments
from recfunnel.html import WORSE_STYLE, cell_text, figure_html, table_html
from recfunnel.names import DURATION_AWARE_WATCH, NAIVE_WATCH

SECTION_ORDER = ("data", "dataset", "models", "evaluation", "serving", "experiments")


def render_data(section: dict) -> str:
    rows = [("source", section["source"]), ("origin", section["origin"]),
            ("events kept", section["events"]), ("users", section["users"]),
            ("items", section["items"]), ("catalogue items", section.get("catalogue_items")),
            ("time range", " to ".join(section["time_range"])),
            ("rows quarantined", section["quarantined_rows"]),
            ("of them exact copies of an earlier event", section.get("duplicate_events", 0))]
    parts = [table_html(rows)]
    reasons = section.get("quarantined_by_reason") or {}
    if reasons:
        injected = section.get("bad_rows_injected") or {}
        names = sorted(reasons)
        fig, ax = plt.subplots(figsize=(7, 0.4 * len(names) + 1))
        ax.barh(names, [reasons[n] for n in names], label="quarantined")
        if injected:
            ax.scatter([injected.get(n, 0) for n in names], names, color="black", zorder=3,
                       label="injected by the generator (truth)")
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.35), ncol=2)
        ax.set_xlabel("rows")
        ax.set_title("Rows set aside by validation, by reason")
        parts.append(figure_html(fig, "quarantined rows by reason"))
        parts.append(table_html(sorted(reasons.items()), ("reason", "rows")))
    else:
        parts.append("<p>No row was quarantined.</p>")
    return "".join(parts)


def render_dataset(section: dict) -> str:
    steps = section["steps"]
    names = ["validated events"] + [s["name"] for s in steps]
    fig, axes = plt.subplots(1, 3, figsize=(12, 0.45 * len(names) + 1.2), sharey=True)
    for ax, what in zip(axes, ("rows", "users", "items")):
        values = [steps[0][f"{what}_before"]] + [s[f"{what}_after"] for s in steps]
        ax.barh(range(len(names)), values, color="#76b900")
        for y, v in enumerate(values):
            ax.text(v, y, f" {v:,}", va="center", fontsize=8)
        ax.set_title(what)
        ax.set_xlim(0, max(values) * 1.3)
    axes[0].set_yticks(range(len(names)), names)
    axes[0].invert_yaxis()
    fig.suptitle("What each step of the dataset build kept (L1.5)")
    parts = [figure_html(fig, "dataset step funnel")]
    parts.append(table_html(
        [(s["name"], s["rows_before"], s["rows_after"], s["users_before"], s["users_after"],
          s["items_before"], s["items_after"], s.get("note", "")) for s in steps],
        ("step", "rows before", "rows after", "users before", "users after", "items before",
         "items after", "note")))
    cut = section["cutoffs"]
    parts.append("<h3>Splits</h3>" + table_html(
        [(name, rows, *section["positives"][name].values()) for name, rows in section["splits"].items()],
        ("split", "rows", *next(iter(section["positives"].values())).keys())))
    parts.append(f"<p>Split: {cut['split']}; training cut-off {cut['train_end']}, validation until "
                 f"{cut['valid_end']}, data end {cut['data_end']}. Checks passed: "
                 f"{'; '.join(section['checks'])}.</p>")
    dup, unsafe, left = section["duplicates"], section["unsafe"], section["left_out_users"]
    rows = [("duplicate copies mapped to a canonical id", dup["copies"]),
            ("unsafe items blocked", unsafe["items_blocked"]),
            ("users left out (served by the fallback)", left["count"])]
    for key in ("precision", "recall"):
        if key in dup:
            rows.append((f"duplicate detection {key} (vs truth)", dup[key]))
        if key in unsafe:
            rows.append((f"unsafe filters {key} (vs truth)", unsafe[key]))
    parts.append(table_html(rows))
    audit = section.get("labels_vs_truth")
    if audit:
        parts.append(_label_plot(audit))
    parts.append("<h3>Embedding tables (L3.1)</h3>" + table_html(
        [(t["column"], t["rows"], t["dim"], t["megabytes"]) for t in section["embedding_tables"]],
        ("column", "rows", "dim", "MB (rows x dim x 4 bytes)")))
    return "".join(parts)


def _label_plot(audit: dict) -> str:
    rates = audit["positive_rate_by_duration"]
    buckets = list(audit["true_relevance_by_duration"])
    fig, ax = plt.subplots(figsize=(9, 3.6))
    for label, style in ((NAIVE_WATCH, "o-"), (DURATION_AWARE_WATCH, "s-")):
        ax.plot(buckets, [rates[label].get(b, float("nan")) for b in buckets], style, label=label)
    ax.set_ylabel("positive rate of clicked examples")
    ax.set_xlabel("item duration")
    ax2 = ax.twinx()
    ax2.plot(buckets, [audit["true_relevance_by_duration"][b] for b in buckets], "k--",
             label="mean true relevance")
    ax2.set_ylabel("true relevance")
    ax.legend(loc="upper right")
    ax2.legend(loc="lower left")
    ax.set_title("Watch labels by item length (L2.2): the naive label favours short items")
    ax.tick_params(axis="x", rotation=30)
    auc = audit["auc_vs_true_relevance"]
    table = table_html([(k, v) for k, v in auc.items()], ("label", "ROC-AUC vs true relevance"))
    return figure_html(fig, "watch labels by duration") + table


def render_models(section: dict) -> str:
    models = section["models"]
    rows = []
    for name, m in models.items():
        last = m["history"][-1] if m["history"] else {}
        metric = {k: v for k, v in last.items() if k.startswith("val_") and "loss" not in k}
        rows.append((name, m["parameters"], m.get("embedding_megabytes", ""),
                     m.get("train_seconds", ""), m.get("examples_per_second", ""),
                     ", ".join(f"{k[4:]} {v}" for k, v in metric.items())))
    parts = [f"<p>Version <code>{section['version']}</code>: every artifact of this training "
             "carries it, and serving refuses to mix versions.</p>",
             table_html(rows, ("model", "parameters", "embedding MB", "train s", "examples/s",
                               "last epoch, validation"))]
    curves = {n: m for n, m in models.items()        # the models trained in epochs
              if any("epoch" in h for h in m["history"])}
    if curves:
        fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3.2), squeeze=False)
        for ax, (name, m) in zip(axes[0], curves.items()):
            epochs = [h["epoch"] for h in m["history"]]
            for key in sorted({k for h in m["history"] for k in h
                               if k.startswith("val_") and "loss" not in k}):
                ax.plot(epochs, [h.get(key) for h in m["history"]], "o-", label=key[4:])
            ax.set_title(name)
            ax.set_xlabel("epoch")
            ax.legend(fontsize=7)
        fig.suptitle("Validation metrics per epoch")
        fig.tight_layout()
        parts.append(figure_html(fig, "validation metrics per epoch"))
    tables = [(name, t["column"], t["rows"], t["dim"], t["megabytes"])
              for name, m in models.items() for t in m.get("embedding_tables", [])]
    if tables:
        parts.append("<h3>Embedding tables (L3.1)</h3>" + table_html(
            tables, ("model", "column", "rows", "dim", "MB")))
    if "truth" in section:
        parts.append(_truth_html(section["truth"]))
    if "window_sweep" in section:
        parts.append(_window_sweep_html(section["window_sweep"]))
    return "".join(parts)


def _truth_html(truth: dict) -> str:
    """Which objective to rank by, judged by the synthetic truth (L2)."""
    objectives = [(name, m.get("roc_auc"), m.get("pr_auc"), m.get("logloss"),
                   m.get("spearman_vs_true_relevance")) for name, m in truth["objectives"].items()]
    rankings = truth["rankings"]
    rows = [(r["ranking"], r["ndcg"] if r["ndcg"] is not None else "-", r["top_true_relevance"],
             r["top_clickbait_share"], r["top_short_share"], r["top_mean_duration_s"])
            for r in rankings]
    ranked = [r for r in rankings if r["ndcg"] is not None and "ideal" not in r["ranking"]]
    base = rankings[0]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    names = [r["ranking"].split(" (")[0].replace("blend ", "blend\n")[:40] for r in ranked]
    for ax, key, title in zip(axes, ("ndcg", "top_clickbait_share", "top_short_share"),
                              (f"NDCG@{truth['k']} of true relevance", "click-bait share of top",
                               "short-item share of top")):
        ax.barh(names, [r[key] for r in ranked], color="#76b900")
        if key != "ndcg":
            ax.axvline(base[key], color="k", ls="--", lw=1, label="all candidates")
            ax.legend(fontsize=7)
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    return (f"<h3>Against the ground truth (synthetic data, {truth['split']} split)</h3>"
            f"<p>The heavy ranker's heads, per objective, on {truth['rows']:,} test rows "
            f"(impressions and sampled negatives) of {truth['users']:,} users.</p>"
            + table_html(objectives, ("objective", "ROC-AUC", "PR-AUC", "logloss",
                                      "Spearman vs true relevance"))
            + f"<p>Each user's test candidates ranked by one head or by the blend; the top "
              f"{truth['k']} judged by the true relevance.</p>"
            + figure_html(fig, "rankings against the truth")
            + table_html(rows, ("ranking", f"NDCG@{truth['k']}", "top: true relevance",
                                "top: click-bait share", "top: short share",
                                "top: mean duration s")))


def _window_sweep_html(sweep: dict) -> str:
    """Diminishing returns of more history (L1.2)."""
    windows = sweep["windows"]
    models = list(sweep["metrics"])
    fig, axes = plt.subplots(1, len(models) + 1, figsize=(4.2 * (len(models) + 1), 3.4))
    for ax, name in zip(axes, models):
        for w in windows:
            pts = w["models"][name]["points"]
            ax.plot([p["steps"] for p in pts], [p["value"] for p in pts], "o-",
                    label=f"{w['days']} d", ms=3)
        ax.set_xlabel("training steps")
        ax.set_title(f"{name}: {sweep['metrics'][name]}", fontsize=10)
        ax.legend(fontsize=7)
    ax = axes[-1]
    for name in models:
        ax.plot([w["days"] for w in windows], [w["models"][name]["best"] for w in windows], "o-",
                label=name)
    ax.set_xlabel("training window (days)")
    ax.set_title("best validation metric vs window", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    rows = [(w["days"], w["train_rows"], w["train_positives"],
             *(w["models"][n]["best"] for n in models),
             *(w["models"][n]["train_seconds"] for n in models)) for w in windows]
    return ("<h3>Diminishing returns of history (L1.2)</h3>"
            f"<p>The same models trained on the last D days before {sweep['train_end'][:10]}, "
            "all measured on the same validation split.</p>"
            + figure_html(fig, "metric against steps and window size")
            + table_html(rows, ("days", "training rows", "positives",
                                *(f"{n} best {sweep['metrics'][n]}" for n in models),
                                *(f"{n} train s" for n in models))))


def render_evaluation(section: dict, run_dir: Path | None = None) -> str:
    """Offline evaluation (L4, L6): models side by side, the funnel's cuts, the rankers' curves,
    slices and popularity bias. Curves and slices come from `evaluation/metrics.json`."""
    metrics = {}
    if run_dir is not None and (Path(run_dir) / section.get("metrics_path", "")).is_file():
        metrics = json.loads((Path(run_dir) / section["metrics_path"]).read_text())
    k = section["k"]
    truth = section.get("truth") or {}
    cols = [f"recall@{k}", f"ndcg@{k}", f"hit_rate@{k}", f"mrr@{k}", f"map@{k}"]
    rows = []
    for name, m in section["models"].items():
        wide = next((v for key, v in m.items() if key.startswith("recall@") and key != cols[0]),
                    "")
        t = truth.get(name, {})
        rows.append((name, *(m.get(c) for c in cols), wide, t.get(f"share_of_ideal@{k}", ""),
                     t.get(f"clickbait_share@{k}", "")))
    parts = [f"<p>{section['users']:,} test users ({section['users_fallback']:,} served by the "
             "fallback); full ranking over the catalogue, the user's training and validation "
             "items excluded. On synthetic data the last columns judge the same lists by the "
             "true relevance (share of the ideal top-k's relevance), not by logged clicks.</p>",
             table_html(rows, ("model", *cols, "recall@candidates", "truth: share of ideal",
                               "truth: click-bait share"))]
    funnel = [(stage, v.get("kept"), v.get("recall"), v.get("ndcg@k"))
              for stage, v in section["funnel"].items() if "kept" in v]
    if funnel:
        parts.append("<h3>Where the funnel loses relevant items (L6)</h3>" + table_html(
            funnel, ("stage", "items kept", "recall at the cut", f"NDCG@{k}")))
    if section.get("stages"):
        parts.append(_stages_html(section["stages"], k))
    if section.get("exposure"):
        parts.append(_exposure_html(section["exposure"], section["models"], k))
    parts.append(_ranker_curves(metrics.get("rankers", {}), section["rankers"]))
    if metrics.get("slices"):
        parts.append(_slices_html(metrics["slices"], k))
    parts.append(_bias_html(section["bias"], section.get("bias_flags", {}), metrics.get("bias", {})))
    return "".join(parts)


def _stages_html(stages: list[dict], k: int) -> str:
    """Each ranking stage's output order against its input's own order over the same items."""
    confidence = f"{100 * stages[0].get('interval_confidence', 0.95):g} %"
    parts = ["<h3>Does each stage improve on its input? (L6)</h3>"
             f"<p>Each stage's order against the order it received, over the same items: the "
             f"input's top {k} (and top kept) against the output's, positives counted only "
             f'among the items the input held. A stage is <span style="{WORSE_STYLE}">'
             f"worse</span> when the {confidence} paired bootstrap interval (over users) of "
             "its NDCG difference lies below 0, by logged positives or, on synthetic data, by "
             "the truth.</p>"]
    for stage in stages:
        rows, red = [], set()
        for judge in ("logged", "truth"):
            m = stage.get(judge)
            if not m:
                continue
            metrics = [key[len("input_"):] for key in m if key.startswith("input_")]
            for metric in metrics:
                interval = m.get(f"{metric}_difference_interval")
                if metric.startswith("ndcg") and stage.get(f"worse_{judge}"):
                    red.add(len(rows))
                values = (m[f"input_{metric}"], m[f"output_{metric}"],
                          m[f"{metric}_difference"])
                rows.append((judge, metric, *("-" if v is None else v for v in values),
                             "[" + ", ".join("-" if v is None else cell_text(v) for v in interval)
                             + "]" if interval else ""))
        judges = [j for j in ("logged", "truth") if stage.get(f"worse_{j}")]
        verdict = f"worse than its input by {' and '.join(judges)}" if judges else \
            "not worse than its input"
        style = f' style="{WORSE_STYLE}"' if stage.get("worse") else ""
        scored = f"logged: {stage['logged']['users_scored']:,} users with a held-out positive " \
            "among the input's items"
        if stage.get("truth"):
            scored += f"; truth: {stage['truth']['users_scored']:,} users"
        parts.append(f"<h4{style}>{html.escape(stage['stage'])}: {html.escape(stage['input'])} "
                     f"({stage['input_width']:,}) to {html.escape(stage['output'])} "
                     f"({stage['kept']:,}): {verdict}</h4>"
                     f"<p>Scored, {scored}.</p>"
                     + table_html(rows, ("judge", "metric", "input order", "output order",
                                         "difference", f"{confidence} interval"), red))
    return "".join(parts)


def _exposure_html(exposure: dict, models: dict, k: int) -> str:
    """How much of each list the logging policy showed: all that logged recall can count."""
    policy, lists = exposure["logging_policy"], exposure["lists"]
    truth = any(f"true_relevance_shown@{k}" in m for m in lists.values())
    text = ("<h3>Exposure: logged recall only counts what the old system showed</h3>"
            "<p>A held-out click exists only where the logging policy made an impression "
            f"({_pct(policy.get('positives_shown_share'))} of the held-out positives were "
            f"impressions). It showed each test user {cell_text(policy.get('shown_per_user'))} items "
            "in the test period on average")
    if policy.get("random_list_shown_share") is not None:
        text += (f", so a uniformly random top {k} would hold "
                 f"{_pct(policy['random_list_shown_share'])} shown items")
    text += (f"; {_pct(policy.get('positive_rate_of_shown'))} of what it showed was clicked. "
             f"For each list: the share of its top {k} the user was shown, the click rate "
             "(held-out positives) among those, and precision, their product")
    text += (", and by the truth the mean true relevance of the shown and of the never-shown "
             "items, which logged recall cannot credit.</p>" if truth else ".</p>")
    recall = {n: (models.get(n) or {}).get(f"recall@{k}") for n in ("two_tower", "funnel")}
    if None not in recall.values() and recall["funnel"] < recall["two_tower"] \
            and {"two_tower", "funnel"} <= set(lists):
        tt, fu = lists["two_tower"], lists["funnel"]
        text += (f"<p>The funnel's logged recall@{k} ({cell_text(recall['funnel'])}) is below "
                 f"two-tower's ({cell_text(recall['two_tower'])}): {_pct(fu[f'shown_share@{k}'])} "
                 f"of the funnel's top {k} was ever shown to its user, against "
                 f"{_pct(tt[f'shown_share@{k}'])} of two-tower's, and among the shown its click "
                 f"rate is {_pct(fu[f'positive_rate_of_shown@{k}'])} against "
                 f"{_pct(tt[f'positive_rate_of_shown@{k}'])}")
        if truth:
            text += (f"; the funnel's never-shown items have a mean true relevance of "
                     f"{cell_text(fu.get(f'true_relevance_not_shown@{k}'))} (two-tower's "
                     f"{cell_text(tt.get(f'true_relevance_not_shown@{k}'))})")
        text += ".</p>"
    header = ("list", "users", f"shown share@{k}", "click rate of shown", f"precision@{k}",
              "positives not shown")
    labels = {"funnel_light": f"funnel_light (the light ranker's top {k})",
              "funnel": "funnel (heavy ranker + blend)"}
    rows = [(labels.get(name, name), m["users"], m[f"shown_share@{k}"],
             m[f"positive_rate_of_shown@{k}"], m[f"precision@{k}"], m["positives_not_shown"],
             *((m.get(f"true_relevance_shown@{k}"), m.get(f"true_relevance_not_shown@{k}"))
               if truth else ())) for name, m in lists.items()]
    if truth:
        header += ("truth: relevance of shown", "truth: relevance of not shown")
    policy_row = ("logging policy (all it showed)", policy["users"], "",
                  policy.get("positive_rate_of_shown"), "", "")
    if truth:
        policy_row += (policy.get("true_relevance_shown"), "")
    return text + table_html([*rows, policy_row], header)


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def _ranker_curves(full: dict, summary: dict) -> str:
    rows = [(ranker, obj, m.get("roc_auc"), m.get("pr_auc"), m.get("logloss"))
            for ranker, by in summary.items() for obj, m in by.items()]
    out = "<h3>Rankers on the test rows (impressions and sampled negatives)</h3>" + table_html(
        rows, ("ranker", "objective", "ROC-AUC", "PR-AUC", "logloss"))
    heavy = full.get("heavy", {})
    with_curves = {o: m for o, m in heavy.items() if "roc_curve" in m}
    if with_curves:
        fig, (roc, pr) = plt.subplots(1, 2, figsize=(10, 3.8))
        for obj, m in with_curves.items():
            roc.plot(m["roc_curve"]["fpr"], m["roc_curve"]["tpr"],
                     label=f"{obj} ({m['roc_auc']:.3f})")
            pr.plot(m["pr_curve"]["recall"], m["pr_curve"]["precision"],
                    label=f"{obj} ({m['pr_auc']:.3f})")
        roc.plot([0, 1], [0, 1], "k:", lw=1)
        roc.set(xlabel="false positive rate", ylabel="true positive rate",
                title="heavy ranker ROC")
        pr.set(xlabel="recall", ylabel="precision", title="heavy ranker precision-recall")
        roc.legend(fontsize=7)
        pr.legend(fontsize=7)
        fig.tight_layout()
        out += figure_html(fig, "ROC and PR curves")
    return out


def _slices_html(slices: list[dict], k: int) -> str:
    """One panel per slice: each group's value of the headline metric, the overall line."""
    frame = [r for r in slices if r["slice"] != "overall"]
    metric = next((m for m in (f"funnel:share_of_ideal@{k}", f"recall@{k}")
                   if any(r["metric"] == m for r in frame)), None)
    if metric is None:
        return ""
    names = list(dict.fromkeys(r["slice"] for r in frame))
    overall = next(r["value"] for r in slices if r["slice"] == "overall" and r["metric"] == metric)
    fig, axes = plt.subplots(1, len(names), figsize=(3.3 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        groups = [r for r in frame if r["slice"] == name and r["metric"] == metric]
        values = [r["value"] if r["value"] is not None else 0 for r in groups]
        colors = ["#bbb" if r["too_small"] else "#76b900" for r in groups]
        ax.bar([r["group"] for r in groups], values, color=colors)
        ax.axhline(overall, color="k", ls="--", lw=1)
        ax.set_title(name, fontsize=10)
        ax.tick_params(axis="x", rotation=45, labelsize=7)
    fig.suptitle(f"{metric} per group (grey: too few users to judge; dashed: overall)",
                 fontsize=10)
    fig.tight_layout()
    rows = [(r["slice"], r["group"], r["users"], r["metric"], r["value"], r["gap_to_overall"],
             "too small" if r["too_small"] else "") for r in slices if r["metric"] == metric]
    return ("<h3>Slices (L4.2)</h3>" + figure_html(fig, "metric per user group")
            + table_html(rows, ("slice", "group", "users", "metric", "value", "gap", "")))


def _bias_html(bias: dict, flags: dict, full: dict) -> str:
    """Popularity bias (L4.3): every model's concentration curve and the training data's."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, b in bias.items():
        curve = b["concentration_curve"]
        ax.plot([p["share"] * 100 for p in curve], [p["items"] for p in curve], "o-",
                label=name, lw=2.5 if name == "training_data" else 1.5,
                color="k" if name == "training_data" else None)
    ax.set(xlabel="% of all recommendations (training data: interactions)",
           ylabel="distinct items that make it up", yscale="log",
           title="Popularity bias: how few items make up the recommendations")
    ax.legend(fontsize=8)
    rows = []
    for name, b in bias.items():
        f = flags.get(name, {})
        po = full.get(name, {}).get("popularity_opportunity", {})
        parity = full.get(name, {}).get("parity", {})
        rows.append((name, b.get("coverage", ""), b.get("gini", ""), b.get("popularity_lift", ""),
                     b.get("long_tail_share", ""), po.get("pru", ""), po.get("pri", ""),
                     parity.get("parity_ratio", ""),
                     ", ".join(m for m, v in f.items() if v and m != "all") or "-"))
    return ("<h3>Popularity bias (L4.3)</h3>" + figure_html(fig, "popularity bias curves")
            + table_html(rows, ("model", "coverage", "Gini", "popularity lift", "long-tail share",
                                "PRU", "PRI", "tail/head hit parity", "flagged by")))


def render_serving(section: dict) -> str:
    """The exported funnel served by a real tritonserver and asked for a few users (L6)."""
    lat = section.get("latency_ms", {})
    rows = [("Triton model version / training version",
             f"{section.get('triton_version')} / {section.get('version')}"),
            ("requests, errors", f"{section.get('requests')}, {section.get('errors')}"),
            ("served by path", ", ".join(f"{k}: {v}" for k, v in section.get("paths", {}).items())),
            ("latency p50 / p95 / p99 ms (one user per request, gRPC, loopback)",
             f"{lat.get('p50')} / {lat.get('p95')} / {lat.get('p99')}"),
            ("export s, server start s, stop s",
             f"{section.get('export_seconds')}, {section.get('startup_seconds')}, "
             f"{section.get('shutdown_seconds')}"),
            ("repository", section.get("repo"))]
    example = section.get("example") or {}
    out = table_html(rows)
    if example:
        out += (f"<p>User {example['user']} was recommended items {example['items']} with "
                f"blended scores {example['score']}.</p>")
    if section.get("first_errors"):
        out += "<p>First errors: " + html.escape("; ".join(section["first_errors"])) + "</p>"
    return out


RENDERERS = {"data": render_data, "dataset": render_dataset, "models": render_models,
             "evaluation": render_evaluation, "serving": render_serving,
             "experiments": render_experiments}


def notes_html(section) -> str:
    """A section's `warnings` (what was skipped, and why) and `derived` (what was made up from
    other data), above its content."""
    if not isinstance(section, dict):
        return ""
    parts = []
    for key, title, style in (("warnings", "Skipped, and why", "background:#fff4e0"),
                              ("derived", "Derived from the data", "background:#eef6e4")):
        if section.get(key):
            items = "".join(f"<li>{html.escape(str(w))}</li>" for w in section[key])
            parts.append(f'<div class="{key}" style="{style};padding:4px 12px">'
                         f"<b>{title}</b><ul>{items}</ul></div>")
    return "".join(parts)


def write_report(run_dir: Path, summary: dict) -> Path:
    sections = [s for s in SECTION_ORDER if s in summary] + \
               [s for s in summary if s not in SECTION_ORDER and s != "run"]
    body = []
    for name in sections:
        render = RENDERERS.get(name)
        content = (render(summary[name], run_dir) if name == "evaluation" else
                   render(summary[name])) if render else \
            f"<pre>{html.escape(json.dumps(summary[name], indent=2, default=str))}</pre>"
        body.append(f'<section id="{name}"><h2>{name}</h2>{notes_html(summary[name])}{content}'
                    '</section>')
    run = summary.get("run", {})
    timings = ", ".join(f"{k} {v} s" for k, v in run.get("timings_s", {}).items())
    page = f"""<!doctype html><html><head><meta charset="utf-8">
<title>recfunnel run {html.escape(run.get('name', ''))}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}
img{{max-width:100%}}section{{margin-bottom:2.5em}}h2{{border-bottom:2px solid #76b900}}</style>
</head><body><h1>recfunnel run {html.escape(run.get('name', ''))}</h1>
<p>Started {html.escape(str(run.get('started', '')))}; steps: {html.escape(', '.join(run.get('steps', [])))};
time: {html.escape(timings)}.</p>
<nav>{' · '.join(f'<a href="#{s}">{s}</a>' for s in sections)}</nav>
{''.join(body)}</body></html>"""
    path = Path(run_dir) / "report.html"
    path.write_text(page)
    return path
