"""What a user's clone documents stays inside the clone: no pointer to files it does not have."""
import re
import subprocess

from conftest import REPO


def tracked_text_files():
    names = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.split()
    return [REPO / n for n in names if n.endswith((".md", ".py", ".in", ".yaml", ".yml", ".sh",
                                                  ".ipynb", "Makefile"))]


def test_no_file_points_to_the_developers_shared_folder():
    outside = re.compile(r"\.\./shared/|shared/(MISSION|ENVIRONMENT|STYLE)\.md|"
                         r"(?<![\w/])ENVIRONMENT\.md")
    hits = [f"{p.relative_to(REPO)}:{n}" for p in tracked_text_files() if p.is_file()
            for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
            if outside.search(line) and p.name != "test_docs.py"]
    assert hits == []


def test_every_docs_page_the_readme_names_exists():
    named = set(re.findall(r"`?(docs/[\w./-]+\.(?:md|py))", (REPO / "README.md").read_text()))
    assert "docs/own_data.md" in named and "docs/environment.md" in named
    assert [n for n in named if not (REPO / n).is_file()] == []
