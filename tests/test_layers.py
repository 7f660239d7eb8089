"""Imports flow one way down the funnel: data -> workflows -> models -> evaluation -> serving ->
experiments -> the pipeline and its commands. Every project module's imports (function-local
ones too) are read with `ast`; an import of a higher layer fails naming file:line."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

# Imported by every layer; a leaf imports only other leaves.
LEAVES = ("recfunnel", "recfunnel.config", "recfunnel.errors", "recfunnel.names",
          "recfunnel.topk", "recfunnel.html")
# Lowest first: a module may import its own layer, the ones before it and the leaves.
LAYERS = (
    ("data", ("recfunnel.data",)),
    ("workflows", ("recfunnel.workflows",)),
    ("models", ("recfunnel.models",)),
    ("evaluation", ("recfunnel.evaluation",)),
    ("serving", ("recfunnel.serving", "recfunnel.monitoring", "triton_repo")),
    ("experiments", ("recfunnel.experiments",)),
    ("pipeline", ("recfunnel.audit", "recfunnel.preflight", "recfunnel.pipeline",
                  "recfunnel.report", "recfunnel.retrain", "recfunnel.cli",
                  "recfunnel.__main__")),
)
# (importing file, imported module): why the upward import stays for now. Each entry must still
# be needed (test_every_exception_is_still_needed).
EXCEPTIONS = {
    ("triton_repo/funnel/model.py", "recfunnel.experiments.assignment"):
        "the served router assigns each request's users to the running experiment's arms; "
        "triton_repo/ is being rewritten with the declared funnel, which moves the assignment "
        "(hashing users into arms, no statistics) below serving",
}
PACKAGES = ("recfunnel", "workflows", "models", "triton_repo")


def module_name(path: Path) -> str:
    """The import name: models/ and workflows/ are recfunnel.models and recfunnel.workflows."""
    parts = path.relative_to(REPO).with_suffix("").parts
    if parts[0] in ("models", "workflows"):
        parts = ("recfunnel", *parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_files() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (REPO / package).rglob("*.py"))


MODULES = {module_name(p) for p in project_files()}


def layer_of(module: str) -> int | None:
    """-1 for a leaf, the layer's index, or None for a module outside the project."""
    if module in LEAVES:
        return -1
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    return None


def imported_modules(path: Path, module: str):
    """(line, module) of every project module that `path` (the module `module`) imports, at any
    depth of the file; relative imports resolved."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join([*parts[:len(parts) - node.level + 1], *([base] if base else [])])
            # `from a import b`: b is a module of the project or a name in module a
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                     for a in node.names]
        else:
            continue
        for name in dict.fromkeys(names):
            if name.split(".")[0] in PACKAGES:
                yield node.lineno, name


def upward_imports():
    """(file, line, imported module, why it is wrong) of every import against the layers."""
    for path in project_files():
        importer = module_name(path)
        mine = layer_of(importer)
        assert mine is not None, f"{path.relative_to(REPO)} is in no layer; add it to LAYERS"
        for line, module in imported_modules(path, importer):
            theirs = layer_of(module)
            if theirs is None:
                continue
            if mine == -1 and theirs != -1:
                yield path, line, module, "a leaf imports only leaves"
            elif mine != -1 and theirs > mine:
                yield path, line, module, (f"layer {LAYERS[mine][0]} imports layer "
                                           f"{LAYERS[theirs][0]}")


def test_no_module_imports_a_higher_layer():
    found = [f"{path.relative_to(REPO)}:{line}: imports {module} ({why})"
             for path, line, module, why in upward_imports()
             if (str(path.relative_to(REPO)), module) not in EXCEPTIONS]
    assert not found, "imports against the layers:\n" + "\n".join(found)


def test_every_exception_is_still_needed():
    used = {(str(path.relative_to(REPO)), module) for path, _, module, _ in upward_imports()}
    assert not set(EXCEPTIONS) - used, f"no longer needed: {sorted(set(EXCEPTIONS) - used)}"


def test_the_reader_sees_function_local_and_relative_imports(tmp_path):
    source = tmp_path / "fake.py"
    source.write_text("def f():\n    from recfunnel.serving import export\n"
                      "from . import schema\nimport numpy\n")
    assert sorted(imported_modules(source, "recfunnel.data.fake")) == [
        (2, "recfunnel.serving.export"), (3, "recfunnel.data.schema")]


@pytest.mark.parametrize("modules", [
    "recfunnel.evaluation, recfunnel.evaluation.offline",
    "recfunnel.experiments.ab_test, recfunnel.experiments.feedback_loop",
    "recfunnel.serving.client, recfunnel.serving.funnel_client",
    "recfunnel.models.blend, recfunnel.models.artifacts, recfunnel.models.features, "
    "recfunnel.models.peers, recfunnel.models.components, recfunnel.models.funnel",
])
def test_evaluation_experiments_and_the_client_import_without_tensorflow(modules):
    code = f"import sys, {modules}; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, check=True).stdout.strip()
    assert out == "False"
