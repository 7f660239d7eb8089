"""versions.json keeps the history of a served repository, including what export's cleanup
removed (recfunnel.serving.export.remove_old_versions), on a repository of empty versions."""
import json

from recfunnel.serving.export import (ROUTER, STAGES_FILE, VERSIONS_FILE, remove_old_versions,
                                      versions_in)

STAGES = ["user_features", "candidates", "light_ranker", "heavy_ranker"]


def empty_version(repo, n, models=(*STAGES, ROUTER)):
    """Version n's folders of `models` (no artifacts), as export lays them out."""
    for model in models:
        (repo / model / str(n)).mkdir(parents=True)
        (repo / model / "config.pbtxt").write_text(f'name: "{model}"')
    if ROUTER in models:
        (repo / ROUTER / str(n) / STAGES_FILE).write_text(json.dumps({"stages": STAGES}))


def test_cleanup_marks_every_version_it_removes_in_versions_json(tmp_path):
    repo = tmp_path / "repo"
    for n in (1, 2, 3, 4):
        empty_version(repo, n, STAGES[:2] if n == 2 else (*STAGES, ROUTER))  # 2: interrupted
    record = {str(n): {"training_version": f"v{n}"} for n in (1, 3, 4)}
    (repo / VERSIONS_FILE).write_text(json.dumps(record))
    removed = remove_old_versions(repo, keep=2, staging=tmp_path / "staging")
    assert removed == [1, 2] and versions_in(repo, complete=False) == [3, 4]
    after = json.loads((repo / VERSIONS_FILE).read_text())
    assert after["1"]["retired_by"] == "export cleanup" and after["1"]["training_version"] == "v1"
    assert after["2"] == {"incomplete": True, "retired": after["2"]["retired"],
                          "retired_by": "export cleanup"}
    assert "retired" not in after["3"] and "retired" not in after["4"]
    assert remove_old_versions(repo, keep=2, staging=tmp_path / "staging") == []


def test_a_version_is_complete_when_every_stage_its_router_names_has_it(tmp_path):
    repo = tmp_path / "repo"
    empty_version(repo, 1)
    (repo / ROUTER / "2").mkdir()                              # a funnel without a light ranker
    (repo / ROUTER / "2" / STAGES_FILE).write_text(json.dumps(
        {"stages": ["user_features", "candidates", "heavy_ranker"]}))
    for model in ("user_features", "candidates", "heavy_ranker"):
        (repo / model / "2").mkdir()
    (repo / "user_features" / "3").mkdir()                     # an export stopped early
    assert versions_in(repo) == [1, 2] and versions_in(repo, complete=False) == [1, 2, 3]
