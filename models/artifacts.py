"""Versioned artifacts (L5.2): everything one training run writes carries one version id.

Each artifact folder holds a `manifest.json`: version, kind, the sha256 of every file, the
feature schema, the config and the metrics of the run. Loading verifies the checksums, and the
pieces that must come from one training (a query tower and the item embeddings it is scored
against) are refused when their versions differ: mixing them gives confident nonsense.
"""
from __future__ import annotations

import hashlib
import json
import secrets
from datetime import datetime, timezone
from pathlib import Path

from recfunnel.errors import RecfunnelError

MANIFEST = "manifest.json"


class ArtifactError(RecfunnelError, ValueError):
    """An artifact folder is incomplete, altered, or not what the caller expects."""


class VersionMismatchError(ArtifactError):
    """Artifacts from different trainings were about to be used together."""


def new_version() -> str:
    """A sortable, unique version id: UTC time plus random hex, e.g. 20261128T190512Z-3f9a2c."""
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha256(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != MANIFEST}


def write_manifest(folder: str | Path, version: str, kind: str, schema: dict | None = None,
                   config: dict | None = None, metrics: dict | None = None) -> dict:
    """Writes `manifest.json` over every file now in `folder`; returns it."""
    folder = Path(folder)
    manifest = {"version": version, "kind": kind,
                "created": datetime.now(timezone.utc).isoformat(),
                "files": _files(folder), "schema": schema or {}, "config": config or {},
                "metrics": metrics or {}}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
    return manifest


def read_manifest(folder: str | Path, kind: str | None = None, verify: bool = True) -> dict:
    """The manifest of `folder`, after checking that every listed file is there, unchanged."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{folder}: no {MANIFEST}; not an artifact written by recfunnel")
    manifest = json.loads(path.read_text())
    if kind is not None and manifest.get("kind") != kind:
        raise ArtifactError(f"{folder}: holds a '{manifest.get('kind')}', expected a '{kind}'")
    if verify:
        for name, digest in manifest["files"].items():
            file = folder / name
            if not file.is_file():
                raise ArtifactError(f"{folder}: file {name} listed in the manifest is missing")
            if sha256(file) != digest:
                raise ArtifactError(f"{folder}: file {name} does not match its sha256 in the "
                                    "manifest (altered or partly copied)")
    return manifest


def require_same_version(**manifests: dict) -> str:
    """The shared version of the given manifests; VersionMismatchError when they differ."""
    versions = {name: m["version"] for name, m in manifests.items()}
    if len(set(versions.values())) != 1:
        listed = ", ".join(f"{name} {v}" for name, v in versions.items())
        raise VersionMismatchError(f"artifacts from different trainings cannot be mixed: {listed}; "
                                   "export the query tower and item embeddings of one run together")
    return next(iter(versions.values()))
