"""The installed distribution claims one import name, `recfunnel` (issue 16): the design card's
top-level folders `models/` and `workflows/` install as `recfunnel.models` and
`recfunnel.workflows`, so a project with its own `models` package can install recfunnel beside
it. Built and installed for real (pip, no network: --no-deps --no-build-isolation)."""
import os
import shutil
import subprocess
import sys
import zipfile

from conftest import REPO


def test_the_wheel_holds_only_the_recfunnel_package(tmp_path):
    source = tmp_path / "source"             # setuptools builds in the source folder: a copy
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "recfunnel", "models", "workflows"):
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
        copy(REPO / name, source / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                            if (REPO / name).is_dir() else {}))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), str(source)], check=True, cwd=tmp_path,
                   env={**os.environ, "PIP_NO_INDEX": "1"}, timeout=300)
    wheel = next(tmp_path.glob("recfunnel-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"recfunnel"}, top
    assert "recfunnel/models/funnel.py" in names and "recfunnel/workflows/dataset.py" in names

    target, other = tmp_path / "site", tmp_path / "other"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                    "--target", str(target), str(wheel)], check=True, timeout=300)
    for name in ("models", "workflows"):          # another project's generic packages
        (other / name).mkdir(parents=True)
        (other / name / "__init__.py").write_text("OWNER = 'the other project'\n")
    probe = ("import models, workflows, recfunnel.models.funnel as f, recfunnel.models.components\n"
             "assert models.OWNER == workflows.OWNER == 'the other project'\n"
             f"assert f.__file__.startswith({str(target)!r}), f.__file__\n"
             "print('ok')\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True,
                          text=True, env={**env, "PYTHONPATH": f"{target}{os.pathsep}{other}"},
                          timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


def test_a_clone_imports_the_same_names_without_installing(tmp_path):
    """Run from the clone (PYTHONPATH, as make does), recfunnel.models is the clone's models/."""
    probe = ("import recfunnel.models.funnel as f, recfunnel.workflows.unsafe as u, sys\n"
             f"assert f.__file__ == {str(REPO / 'models' / 'funnel.py')!r}, f.__file__\n"
             f"assert u.__file__ == {str(REPO / 'workflows' / 'unsafe.py')!r}, u.__file__\n"
             "assert 'models' not in sys.modules and 'workflows' not in sys.modules\n"
             "print('ok')\n")
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]
