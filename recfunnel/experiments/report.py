"""The report's `experiments` section: the A/B decision and what it rests on, offline vs online,
and the feedback-loop rounds with their holdout (recfunnel.report puts it on the run's page)."""
from __future__ import annotations

import html

import matplotlib.pyplot as plt
import numpy as np

from recfunnel.experiments.assignment import HOLDOUT
from recfunnel.html import figure_html, table_html

# arms by their place in experiments.arms (the first is the control); the holdout apart
ARM_PALETTE = ("#888888", "#76b900", "#ff7f0e", "#9467bd", "#8c564b")
HOLDOUT_COLOR = "#1f77b4"


def arm_colors(section: dict) -> dict[str, str]:
    arms = [a["name"] for a in section.get("experiment", {}).get("arms", [])]
    return {**{name: ARM_PALETTE[i % len(ARM_PALETTE)] for i, name in enumerate(arms)},
            HOLDOUT: HOLDOUT_COLOR}


def confidence(alpha: float) -> str:
    """'95 %' for alpha 0.05: the level of the intervals a test at `alpha` reports."""
    return f"{(1 - alpha) * 100:.3g} %"


def render_experiments(section: dict) -> str:
    if "skipped" in section:
        return f"<p>Skipped: {html.escape(section['skipped'])}</p>"
    parts = ([_decision_html(section), _arms_html(section), _tests_html(section),
              _planning_html(section)] if "outcome" in section else [])
    if section.get("exposure"):
        parts.append(_exposure_html(section["exposure"]))
    if section.get("offline_vs_online"):
        parts.append(_offline_online_html(section["offline_vs_online"]))
    if section.get("feedback_loop"):
        parts.append(render_feedback_loop(section["feedback_loop"]))
    return "".join(parts)


def _decision_html(section: dict) -> str:
    served = section.get("served", {})
    experiment = section.get("experiment", {})
    arms = ", ".join(f"{a['name']} {a['share']:.0%} (blend {a['blend'] or 'of the version'})"
                     for a in experiment.get("arms", []))
    low, high = section["lift_ci"]
    return (f"<p><b>Decision: {html.escape(section['outcome'])}</b> — "
            f"{html.escape(section['reason'])}.<br>{html.escape(section['primary_metric'])}: "
            f"lift {section['lift']:+.2%} ({confidence(section['decision']['primary']['alpha'])}"
            f" CI {low:+.2%} to {high:+.2%}), "
            f"p = {section['p_value']:.3g}.</p>"
            f"<p>Experiment <code>{html.escape(str(experiment.get('name')))}</code>: {arms}; "
            f"holdout {experiment.get('holdout_share', 0):.0%} on Triton version "
            f"{experiment.get('holdout_version')}. {served.get('simulated_users')} simulated "
            f"users over {served.get('days')} days asked the real Triton server, which assigned "
            f"each user's arm itself; {served.get('events'):,} examined items logged in "
            f"{served.get('seconds')} s.</p>")


def _arms_html(section: dict) -> str:
    online = section["online"]
    columns = [c for c in online[0] if c != "arm"]
    rows = [(r["arm"], *[r[c] for c in columns]) for r in online]
    colors = arm_colors(section)
    fig, axes = plt.subplots(1, 4, figsize=(12, 2.8))
    for ax, metric in zip(axes, ("watch_seconds_per_user", "likes_per_user", "ctr",
                                 "churn_rate")):
        names = [r["arm"] for r in online]
        ax.bar(names, [r[metric] for r in online],
               color=[colors.get(n, "#999") for n in names])
        ax.set_title(metric, fontsize=9)
        ax.tick_params(labelsize=8)
    fig.tight_layout()
    return ("<h3>Online metrics per arm</h3>" + table_html(rows, ("arm", *columns))
            + figure_html(fig, "online metrics per arm"))


def _tests_html(section: dict) -> str:
    decision = section["decision"]
    tests = [("primary", decision["primary"])] + \
        [("guardrail", g) for g in decision["guardrails"]] + \
        [("secondary", s) for s in section.get("secondary", [])]
    rows = [(role, t["metric"], t["method"], t["control"], t["treatment"],
             _pct(t["lift"]), f"{_pct(t['lift_ci_low'])} to {_pct(t['lift_ci_high'])}",
             f"{t['p_value']:.3g}", "yes" if t["significant"] else "no") for role, t in tests]
    srm = decision.get("srm") or {}
    level = confidence(decision["primary"]["alpha"])
    return ("<h3>Tests (treatment against control)</h3>"
            + table_html(rows, ("role", "metric", "test", "control", "treatment", "lift",
                                f"{level} CI of lift", "p", "significant"))
            + f"<p>Sample-ratio check: {html.escape(srm.get('message', 'not run'))} "
              f"(p = {srm.get('p_value', float('nan')):.3g}).</p>")


def _planning_html(section: dict) -> str:
    power, aa = section["power"], section["aa"]
    holdout = section.get("holdout")
    text = (f"<h3>Power and A/A</h3><p>With {power['n_per_arm']:,} users per arm the test had "
            f"power {power['power']:.2f} to detect a {power['mde_relative']:.0%} lift "
            f"({power['mde_absolute']:.4g}; per-user sd {power['sd']:.4g}); "
            f"{power.get('planned_power', 0.8):.0%} power would need {power['needed_per_arm']:,} users per arm. A/A: {aa['runs']:,} random splits "
            f"of the control's own users ({aa['n_per_arm']:,} a side) rejected in "
            f"{aa['false_positive_rate']:.2%} (95 % CI {aa['ci95'][0]:.2%} to "
            f"{aa['ci95'][1]:.2%}) at alpha {aa['alpha']}.</p>")
    if holdout:
        t = holdout["test_vs_treatment"]
        text += (f"<p>Holdout ({holdout['users']} users, still on the version served when the "
                 f"experiment began) against treatment: {t['metric']} {t['control']:.4g} vs "
                 f"{t['treatment']:.4g}, p = {t['p_value']:.3g}.</p>")
    return text


def _exposure_html(exposure: list[dict]) -> str:
    rows = [(r["arm"], r["clickbait"], r["duration_seconds"], r["true_relevance"])
            for r in exposure]
    return ("<h3>What each arm was shown</h3><p>Means over examined items; the true relevance "
            "comes from the simulator's ground truth, which no real platform sees: it explains "
            "the online numbers (time spent grows with item length).</p>"
            + table_html(rows, ("arm", "click-bait share", "length s", "true relevance")))


def _offline_online_html(result: dict) -> str:
    rows = result["rows"]
    columns = [c for c in rows[0] if c != "list"]
    table = table_html([(r["list"], *[r[c] for c in columns]) for r in rows],
                       ("list", *map(_short, columns)))
    spearman = result["spearman"]
    corr_rows = [(off, *[spearman[off][on] for on in spearman[off]]) for off in spearman]
    corr_rows = [(_short(off), *rest) for off, *rest in corr_rows]
    corr = table_html(corr_rows, ("Spearman", *map(_short, next(iter(spearman.values())))))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for ax, metric in zip(axes, ("offline_recall", "offline_truth_share_of_ideal")):
        for r in rows:
            ax.scatter(r[metric], r["online_watch_seconds_per_user"])
            ax.annotate(r["list"], (r[metric], r["online_watch_seconds_per_user"]), fontsize=8)
        ax.set_xlabel(metric)
        ax.set_ylabel("online watch s per user")
    fig.tight_layout()
    return (f"<h3>Offline vs online</h3><p>Each offline list shown once to the same "
            f"{result['users']:,} simulated test users (day {result['day']}).</p>" + table
            + corr + figure_html(fig, "offline vs online"))


def render_feedback_loop(loop: dict) -> str:
    rounds = loop["rounds"]
    rows = [(r["round"], r["treated"]["watch_seconds_per_user"],
             r["holdout"]["watch_seconds_per_user"], lift_text(r.get("treated_vs_holdout")),
             r["treated"]["true_relevance"],
             r["holdout"]["true_relevance"], r["treated"]["gini"], r["treated"]["coverage"],
             r["treated"]["top10pct_share"]) for r in rounds]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for r in rounds:
        curve = r["treated"]["concentration"]
        at = r["treated"].get("concentration_at_percent", np.linspace(0, 100, len(curve)))
        axes[0].plot(at[1:], curve[1:], "o-", markersize=3, label=f"round {r['round']}")
    axes[0].set_xscale("log")
    axes[0].set_xlabel("% of items, most shown first (log scale)")
    axes[0].set_ylabel("% of impressions")
    axes[0].legend(fontsize=8)
    axes[0].set_title("popularity bias of what the loop shows", fontsize=9)
    x = [r["round"] for r in rounds]
    for group, color in (("treated", "#76b900"), ("holdout", "#1f77b4")):
        axes[1].plot(x, [r[group]["watch_seconds_per_user"] for r in rounds], "o-",
                     color=color, label=group)
        axes[2].plot(x, [r[group]["true_relevance"] for r in rounds], "o-", color=color,
                     label=group)
    axes[1].set_title("watch seconds per user", fontsize=9)
    axes[2].set_title("true relevance of shown items", fontsize=9)
    for ax in axes[1:]:
        ax.set_xlabel("round")
        ax.set_xticks(x)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return ("<h3>Feedback loop</h3><p>" + html.escape(loop.get("description", "")) + "</p>"
            + table_html(rows, ("round", "treated watch s", "holdout watch s",
                                "treated vs holdout (Welch)",
                                "treated true relevance", "holdout true relevance",
                                "Gini of impressions", "coverage", "top-10 % items' share"))
            + figure_html(fig, "feedback loop rounds"))


def lift_text(test: dict | None) -> str:
    """'+10.0% [+1.0%, +20.0%] p=0.03' for a test's to_dict-like lift, p and interval."""
    if not test or test["lift"] is None:
        return "n/a"
    low, high = test["lift_ci"]
    return f"{test['lift']:+.1%} [{low:+.1%}, {high:+.1%}] p={test['p_value']:.2g}"


def _short(column: str) -> str:
    """offline_truth_share_of_ideal -> off: truth share of ideal; online_ctr -> on: ctr"""
    for prefix, label in (("offline_", "off: "), ("online_", "on: ")):
        if column.startswith(prefix):
            column = label + column[len(prefix):]
    return column.replace("_per_user", "/user").replace("_", " ")


def _pct(value) -> str:
    return "n/a" if value is None else f"{value:+.2%}"
