"""recfunnel: a multi-stage recommender on NVIDIA Merlin.

data sources -> `workflows/` (NVTabular) -> `models/` (Merlin Models) -> evaluation ->
`triton_repo/` (Triton) -> experiments. This package holds everything that is not Merlin or
TensorFlow code, so importing it stays fast.

The design card's top-level folders `models/` and `workflows/` are imported as
`recfunnel.models` and `recfunnel.workflows`: installed, setuptools puts them there
(pyproject.toml's package-dir); in a clone on PYTHONPATH, the finder below maps the two names
to the folders. Either way the distribution claims no generic top-level name.
"""
import importlib.abc
import importlib.util
import sys
from pathlib import Path

__version__ = "0.1.0"

_CLONE = Path(__file__).resolve().parent.parent
_FOLDERS = {f"{__name__}.{name}": _CLONE / name for name in ("models", "workflows")}


class _CloneFolders(importlib.abc.MetaPathFinder):
    """recfunnel.models / recfunnel.workflows -> the clone's top-level folders."""

    def find_spec(self, fullname, path=None, target=None):
        folder = _FOLDERS.get(fullname)
        if folder is None or not (folder / "__init__.py").is_file():
            return None
        return importlib.util.spec_from_file_location(
            fullname, folder / "__init__.py", submodule_search_locations=[str(folder)])


if not (Path(__file__).resolve().parent / "models").is_dir() and \
        not any(isinstance(f, _CloneFolders) for f in sys.meta_path):
    sys.meta_path.insert(0, _CloneFolders())
