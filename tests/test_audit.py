"""Truth audits observe the pipeline from the side: each step's section is handed to every
observer after the step; the truth audit adds its verdicts only when the run has a truth."""
import dataclasses

from recfunnel.audit import TruthAudit
from recfunnel.config import Config, RunConfig
from recfunnel.pipeline import run_pipeline


class Recorder:
    def __init__(self):
        self.seen = []

    def after_step(self, step, cfg, run_dir, section):
        self.seen.append((step, sorted(section)))
        section["observed"] = True


def test_each_observer_sees_a_step_section_after_the_step(tmp_path, small_synthetic):
    cfg = dataclasses.replace(Config(), run=RunConfig(name="observed", runs_dir=str(tmp_path),
                                                      cache_dir=str(tmp_path / "cache")))
    cfg.data.synthetic = small_synthetic
    first, second = Recorder(), Recorder()
    run_pipeline(cfg, steps=("data",), progress=False, observers=(first, second))
    assert [step for step, _ in first.seen] == ["data"] and "events" in first.seen[0][1]
    assert "observed" in second.seen[0][1]           # in turn, on the same section


def test_the_truth_audit_adds_nothing_to_a_run_without_a_truth(tmp_path):
    section = {"duplicates": {}, "unsafe": {}, "path": "models/v1"}
    audit = TruthAudit()
    for step in ("dataset", "models", "evaluation"):
        audit.after_step(step, Config(), tmp_path, section)
    assert section == {"duplicates": {}, "unsafe": {}, "path": "models/v1"}
    assert audit.evaluation_truth(tmp_path, predictions=None, k=10) == (None, None)
