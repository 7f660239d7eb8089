"""versions.json keeps the history of a served repository, including what export's cleanup
removed (recfunnel.serving.export.remove_old_versions), on a repository of empty versions."""
import json

from recfunnel.serving.export import MODELS, VERSIONS_FILE, remove_old_versions, versions_in


def test_cleanup_marks_every_version_it_removes_in_versions_json(tmp_path):
    repo = tmp_path / "repo"
    for n in (1, 2, 3, 4):
        for model in MODELS if n != 2 else MODELS[:2]:       # 2: an interrupted export
            (repo / model / str(n)).mkdir(parents=True)
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
