"""`recfunnel export`: one training version of the funnel -> a Triton model repository version.

The served funnel is python-backend models (sources in `triton_repo/`), one per stage of the
declared funnel (models.funnel.FunnelSettings): `user_features`, `candidates` (every source and
filter), one model per ranker named after it (all from `triton_repo/ranker/`), and `funnel`, a
business-logic model that runs them in order for each request, reading which stages version N
has from `funnel/<N>/stages.json`. An export adds Triton version N to each of its models:
`<repo>/<model>/<N>/` holds the model's code and, for a stage, `artifacts/`, a copy of the
training version (its manifests and sha256 sums kept) plus `serving/` (the FunnelSettings, the
items each user has already seen, the unsafe items) under one more manifest of the same version.
An approximate item index (funnel.index) is built here, once per export, and saved beside the
embeddings it searches (models.candidates.save_index): a stage then loads it in seconds.

Writing is atomic per model: everything is assembled in a staging folder beside the repository
(Triton takes any folder inside the repository for a model) and each version folder is moved in
with one os.rename, stages first and the router last, so a server polling the repository never
sees half a version. Exporting refuses a version whose artifacts fail their checksums or come
from different trainings (models.funnel.Funnel checks both), before and after copying.
Nothing written holds an absolute path: a repository copied to another machine serves.
"""
from __future__ import annotations

import importlib.util
import json
import os
import py_compile
import secrets
import shutil
import string
import time
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from recfunnel.models.artifacts import read_manifest, require_same_version, write_manifest
from recfunnel.models.candidates import save_index
from recfunnel.models.components import SOURCES, lookup
from recfunnel.models.features import refresh_feature_tables
from recfunnel.models.funnel import Funnel, FunnelSettings
from recfunnel.config import Config, ConfigError, load_config

FIXED_STAGES = ("user_features", "candidates")   # every funnel's first stages, in request order
RANKER_SOURCE = "ranker"              # triton_repo/ranker/: one source for every declared ranker
CHAIN = "chain"                       # every stage in one process (serving.path chain)
ROUTER = "funnel"
PATHS = ("chain", "stages")           # how the router runs the stages: one call, or one each
STAGES_FILE = "stages.json"           # funnel/<N>/stages.json: version N's stage models in order
                                      # and each ranker's keep, for the router
SHARED_SOURCE = "funnel_stage.py"     # copied beside every model.py
ARTIFACTS = "artifacts"               # <stage>/<N>/artifacts/: the training version
SERVING = "serving"                   # artifacts/serving/: settings and exclusions
VERSIONS_FILE = "versions.json"       # which training version each Triton version serves
SOURCE_ENV = "RECFUNNEL_SOURCE"       # where the stage models import recfunnel from, if set


@dataclass
class ServingSettings:
    """How the exported repository is served (the funnel's own sizes are FunnelSettings)."""
    max_users: int = 64               # users per request; more is refused with a clear error
    router_instances: int = 16        # requests in flight through the router: the chain can
                                      # batch at most this many (c=16: 188 req/s with 4, 311
                                      # with 16, bench_router)
    stage_instances: int = 1          # processes per stage version (each TF one ~650 MB)
    versions_loaded: int = 2          # Triton versions every stage keeps loaded (rollback)
    keep_versions: int = 2            # version folders kept on disk after an export
    path: str = "chain"               # the router calls `chain` once, or each stage (stages)
    chain_instances: int = 1          # processes per chain version (each holds every model)

    def __post_init__(self):      # the config's serving section is checked when it loads;
        if self.path not in PATHS:                    # these may come from command flags
            raise ConfigError(f"serving setting path must be one of {', '.join(PATHS)}, "
                              f"got {self.path!r}")
        for name, value in asdict(self).items():
            if name != "path" and int(value) < 1:
                raise ConfigError(f"serving setting {name} must be >= 1, got {value}")
        if self.versions_loaded < 2:
            raise ConfigError("versions_loaded must be >= 2: a rollback needs the previous "
                              "version still loaded in every stage")


@dataclass
class ExportResult:
    repo: Path
    triton_version: int
    training_version: str
    versions_on_disk: list[int]
    seconds: float


def triton_sources() -> Path:
    """The `triton_repo/` of this clone: the models' code and config templates."""
    sources = Path(__file__).resolve().parents[2] / "triton_repo"
    if not (sources / ROUTER / "model.py").is_file():
        raise FileNotFoundError(f"{sources}: no Triton model sources; run export from a recfunnel "
                                "clone (the sources are not part of an installed wheel)")
    return sources


def exclusions_from_dataset(dataset_dir: str | Path, label: str = "click"
                            ) -> tuple[pd.DataFrame, np.ndarray]:
    """(seen, unsafe): each user's positives in train, valid and test (user_id_raw,
    item_id_raw; never recommended again) and the raw ids of the unsafe items."""
    from recfunnel.models.data import Splits

    dataset_dir = Path(dataset_dir)
    splits = Splits.load(dataset_dir)
    seen = pd.concat([splits.positives(frame, label)[["user_id_raw", "item_id_raw"]]
                      for frame in (splits.train, splits.valid, splits.test)])
    seen = seen.drop_duplicates().sort_values(["user_id_raw", "item_id_raw"])
    unsafe_path = dataset_dir / "artifacts" / "unsafe_items.parquet"
    unsafe = (pd.read_parquet(unsafe_path, columns=["canonical_id"])["canonical_id"]
              .to_numpy(np.int64) if unsafe_path.is_file() else np.empty(0, np.int64))
    return seen.reset_index(drop=True), np.unique(unsafe)


def open_served_version(artifacts_dir: str | Path) -> Funnel:
    """The Funnel of an exported version (`<stage>/<N>/artifacts/`), with its settings and
    exclusions; refused when any file fails its checksum or any part has another version."""
    artifacts_dir = Path(artifacts_dir)
    folder = artifacts_dir / SERVING
    manifest = read_manifest(folder, kind="serving")
    settings = FunnelSettings(**json.loads((folder / "settings.json").read_text()))
    seen = pd.read_parquet(folder / "seen.parquet")
    by_user = {int(u): items.to_numpy(np.int64)
               for u, items in seen.groupby("user_id_raw")["item_id_raw"]}
    funnel = Funnel(artifacts_dir, settings, unsafe_raw=np.load(folder / "unsafe_items.npy"),
                    seen=by_user)
    require_same_version(**funnel.manifests, serving=manifest)
    return funnel


def stage_environment() -> dict:
    """What the stage models need in their environment to import recfunnel and models.

    The python backend's stub ignores PYTHONPATH; when recfunnel is not installed (this clone
    on PYTHONPATH, as `make` runs it) the stages add RECFUNNEL_SOURCE to their sys.path.
    """
    from importlib import metadata

    try:
        metadata.distribution("recfunnel")
        return {}
    except metadata.PackageNotFoundError:
        return {SOURCE_ENV: str(Path(__file__).resolve().parents[2])}


def stage_models(settings: FunnelSettings) -> list[str]:
    """The Triton stage models of a declared funnel, in request order: the fixed stages, then
    one model per ranker, named after it."""
    return [*FIXED_STAGES, *settings.ranker_names]


def models_in(repo: Path) -> list[str]:
    """Every model folder of the repository (a stage of some version, or the router)."""
    return sorted(p.name for p in Path(repo).iterdir()
                  if p.is_dir() and not p.name.startswith(".") and (p / "config.pbtxt").is_file()
                  ) if Path(repo).is_dir() else []


def _folder_versions(folder: Path) -> set[int]:
    return {int(p.name) for p in folder.iterdir() if p.name.isdigit()} if folder.is_dir() else set()


def version_stages(repo: Path, n: int) -> list[str] | None:
    """The stage models Triton version n has (its router's stages.json: each stage, and the
    chain of them all when it has one; None: no router)."""
    path = Path(repo) / ROUTER / str(n) / STAGES_FILE
    if not path.is_file():
        return None
    declared = json.loads(path.read_text())
    return [*declared["stages"], *([declared["chain"]] if declared.get("chain") else [])]


def versions_in(repo: Path, complete: bool = True) -> list[int]:
    """The Triton versions of the repository, oldest first: complete ones (the router and every
    stage it names have it) or any trace of one. An interrupted export leaves an incomplete
    version, which the router never uses."""
    repo = Path(repo)
    found = set().union(*(_folder_versions(repo / m) for m in models_in(repo)))
    if not complete:
        return sorted(found)
    return sorted(n for n in found if (stages := version_stages(repo, n)) is not None
                  and all(n in _folder_versions(repo / m) for m in stages))


def export_version(version_dir: str | Path, dataset_dir: str | Path, repo: str | Path,
                   settings: FunnelSettings, serving: ServingSettings | None = None,
                   triton_version: int | None = None, label: str = "click",
                   origin: str = "", evaluation: dict | None = None) -> ExportResult:
    """Adds a training version (`runs/<run>/models/<version>/`) to the repository `repo` as
    Triton version `triton_version` (default: one above any version exported there before).

    `dataset_dir` gives the exclusions (items seen per user, unsafe items); `label` names the
    positives. Older versions beyond `serving.keep_versions` leave the repository.
    `evaluation` (the run's offline metrics) is recorded with the version for the retraining
    job's quality gate (recfunnel.retrain), which compares a new version with the served one.
    """
    started = time.perf_counter()
    serving = serving or ServingSettings()
    repo = Path(repo).resolve()
    sources = triton_sources()
    source = Funnel(version_dir, settings)        # checksums and one version, or refused
    record = _read_record(repo)
    n = triton_version or max([0, *map(int, record), *versions_in(repo, complete=False)]) + 1
    stages = stage_models(settings)
    models = [*stages, CHAIN]                  # the chain is exported whichever path serves
    taken = [m for m in models_in(repo) if (repo / m / str(n)).exists()]
    if taken or str(n) in record:
        raise FileExistsError(f"{repo}: Triton version {n} was exported before "
                              f"({', '.join(taken) or VERSIONS_FILE}); give another version or "
                              "let export choose the next one")
    repo.mkdir(parents=True, exist_ok=True)
    staging = repo.parent / f".{repo.name}.staging-{os.getpid()}-{secrets.token_hex(3)}"
    try:
        first = staging / stages[0] / str(n) / ARTIFACTS
        _copy_training_version(source, first)
        _save_item_indexes(settings, first)
        _write_serving(first / SERVING, source.version, settings, dataset_dir, label)
        served = open_served_version(first)        # the copy verified as the stages will open it
        for stage in models[1:]:                   # one copy in the repository, linked per stage
            shutil.copytree(first, staging / stage / str(n) / ARTIFACTS, copy_function=_link)
        for model in (*models, ROUTER):
            _write_model_sources(sources, model, staging / model, n, serving)
        (staging / ROUTER / str(n) / STAGES_FILE).write_text(json.dumps(
            {"stages": stages, "keep": {r["name"]: r.get("keep") for r in settings.rankers},
             "chain": CHAIN if serving.path == "chain" else None}))
        for model in (*models, ROUTER):            # the router's new version comes last
            _install(staging / model, repo / model, n)
        record[str(n)] = {"training_version": served.version, "origin": origin,
                          "exported": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                          "settings": settings.to_dict(), "stages": stages,
                          "evaluation": evaluation}
        _write_record(repo, record)
        remove_old_versions(repo, serving.keep_versions, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(repo, n, served.version, versions_in(repo),
                        round(time.perf_counter() - started, 2))


def retire_version(repo: str | Path, triton_version: int) -> list[int]:
    """Rolls back: version `triton_version` leaves every model of the repository (the router
    falls back to the newest version that every stage still has loaded); returns what is left."""
    repo = Path(repo).resolve()
    present = versions_in(repo, complete=False)
    if triton_version not in present:
        raise FileNotFoundError(f"{repo}: no Triton version {triton_version} to retire; "
                                f"present: {present}")
    if versions_in(repo) == [triton_version]:
        raise ValueError(f"{repo}: version {triton_version} is the only one; retiring it would "
                         "leave nothing to serve (export another version first)")
    staging = repo.parent / f".{repo.name}.retired-{os.getpid()}-{secrets.token_hex(3)}"
    try:
        _retire(repo, triton_version, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    record = _read_record(repo)
    if str(triton_version) in record:
        record[str(triton_version)]["retired"] = datetime.now(timezone.utc).isoformat(
            timespec="seconds")
        _write_record(repo, record)
    return versions_in(repo)


def export_run(run_dir: str | Path, repo: str | Path | None = None, overrides: dict | None = None,
               serving: dict | None = None, triton_version: int | None = None
               ) -> ExportResult:
    """Exports the trained version a run folder's summary names (`models.path`) with the run's
    own config (`runs/<run>/config.yaml`, updated by `overrides`); default repo
    runs/<run>/triton_repo. For a command given a run folder (`recfunnel export`, the
    retraining job); the pipeline's own steps hand `export_trained` what they hold instead.

    ServingSettings come from the config's `serving` section, then from `serving` (e.g.
    {"max_users": 128}).
    """
    run_dir = Path(run_dir)
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        raise FileNotFoundError(f"{run_dir}: no summary.json; is this a run folder?")
    summary = json.loads(summary_path.read_text())
    models = summary.get("models", {})
    if "path" not in models:
        raise FileNotFoundError(f"{run_dir}: no trained models in the summary; train first "
                                "(recfunnel train --run-name ...)")
    config = run_dir / "config.yaml"
    cfg = load_config(config if config.is_file() else None, overrides)
    return export_trained(run_dir / models["path"], run_dir / "dataset", cfg,
                          repo or run_dir / "triton_repo", serving=serving,
                          triton_version=triton_version, origin=f"{run_dir.name}/{models['path']}",
                          evaluation=served_metrics(summary.get("evaluation")))


def export_trained(version_dir: str | Path, dataset_dir: str | Path, cfg: Config,
                   repo: str | Path, serving: dict | None = None,
                   triton_version: int | None = None, origin: str = "",
                   evaluation: dict | None = None) -> ExportResult:
    """A trained version under the config's declared funnel (`funnel:`) and serving sizes
    (`serving:`, updated by `serving`), its served feature tables first refreshed from the
    dataset's whole event history (recency is recomputed per request)."""
    version_dir = Path(version_dir)
    if not (version_dir / "features").is_dir():
        raise FileNotFoundError(f"{version_dir}: no features/ (serving feature tables); "
                                "retrain with the pipeline's models step, which writes them")
    refresh_feature_tables(dataset_dir, version_dir)
    names = {f.name for f in fields(ServingSettings)}
    configured = {k: v for k, v in vars(cfg.serving).items() if k in names}
    return export_version(version_dir, dataset_dir, repo, FunnelSettings.from_config(cfg),
                          ServingSettings(**{**configured, **(serving or {})}), triton_version,
                          cfg.models.retrieval_positive, origin=origin, evaluation=evaluation)


def served_metrics(evaluation: dict | None) -> dict | None:
    """What versions.json keeps of a run's evaluation section: the top-K cut and every list's
    overall metrics (`models`), enough for a quality gate to name any of them."""
    return {"k": evaluation["k"], "models": evaluation["models"]} if evaluation else None


# ---- steps ---------------------------------------------------------------------------------
def _link(src, dst):
    """Hard link inside the staging folder (same filesystem), a copy if linking is refused."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _copy_training_version(funnel: Funnel, out: Path) -> None:
    """The artifact folders the declared funnel opens (no other model of the training version)."""
    for name in funnel.settings.artifacts(funnel.root):
        shutil.copytree(funnel.root / name, out / name)


def _save_item_indexes(settings: FunnelSettings, artifacts_dir: Path) -> None:
    """The declared index of every learned source's item embeddings, built and saved beside
    them in the copy (its manifest ties it to those embeddings' sha256)."""
    for s in settings.sources:
        for folder in lookup(SOURCES, "source", s["name"]).artifacts(artifacts_dir):
            kind = read_manifest(artifacts_dir / folder, verify=False)["kind"]
            if kind == "item_embeddings":
                save_index(artifacts_dir / folder, settings.index, settings.index_params)


def _write_serving(folder: Path, version: str, settings: FunnelSettings, dataset_dir,
                   label: str) -> None:
    folder.mkdir(parents=True)
    seen, unsafe = exclusions_from_dataset(dataset_dir, label)
    (folder / "settings.json").write_text(json.dumps(settings.to_dict(), indent=2))
    seen.to_parquet(folder / "seen.parquet", index=False)
    np.save(folder / "unsafe_items.npy", unsafe)
    write_manifest(folder, version, "serving", config={"label": label,
                                                      "seen_pairs": int(len(seen)),
                                                      "unsafe_items": int(len(unsafe))})


def _write_model_sources(sources: Path, model: str, out: Path, n: int,
                         serving: ServingSettings) -> None:
    """Model `model`'s code and config.pbtxt for version n (a ranker: the shared ranker source,
    under its own name)."""
    version = out / str(n)
    version.mkdir(parents=True, exist_ok=True)
    folder = sources / (model if (sources / model / "model.py").is_file() else RANKER_SOURCE)
    for source in (folder / "model.py", sources / SHARED_SOURCE):
        shutil.copy2(source, version / source.name)
        # Compiled now: a stub writing __pycache__ into the version folder on import would
        # change the model folder, and a polling Triton reloads a changed model (measured:
        # every model reloaded once after each start). Hash-checked, so copies stay valid.
        py_compile.compile(str(version / source.name), doraise=True,
                           cfile=importlib.util.cache_from_source(str(version / source.name)),
                           invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
    template = string.Template((folder / "config.pbtxt.template").read_text())
    (out / "config.pbtxt").write_text(template.substitute(asdict(serving), name=model))


def _install(staged_model: Path, model_dir: Path, n: int) -> None:
    """Moves the staged version into the repository with one rename (a new model: its whole
    folder); a changed config.pbtxt is replaced atomically first (Triton reloads the model)."""
    if not model_dir.exists():
        os.rename(staged_model, model_dir)
        return
    config = staged_model / "config.pbtxt"
    if not (model_dir / "config.pbtxt").is_file() or \
            (model_dir / "config.pbtxt").read_text() != config.read_text():
        os.replace(config, model_dir / "config.pbtxt")
    os.rename(staged_model / str(n), model_dir / str(n))


def _retire(repo: Path, n: int, staging: Path) -> None:
    """Version n leaves every model, stages first: a rename out of the repository each."""
    for model in sorted(models_in(repo), key=lambda m: m == ROUTER):
        if (repo / model / str(n)).exists():
            (staging / "retired" / model).mkdir(parents=True, exist_ok=True)
            os.rename(repo / model / str(n), staging / "retired" / model / str(n))


def remove_old_versions(repo: Path, keep: int, staging: Path) -> list[int]:
    """Versions older than the newest `keep` complete ones leave the repository (interrupted
    ones too); versions.json marks each `retired` with `retired_by: "export cleanup"`, so the
    record says what was served and when it left. Returns the versions removed."""
    oldest_kept = versions_in(repo)[-keep:][0]
    removed = [old for old in versions_in(repo, complete=False) if old < oldest_kept]
    for old in removed:
        _retire(repo, old, staging)
    if removed:
        record = _read_record(repo)
        when = datetime.now(timezone.utc).isoformat(timespec="seconds")
        for old in removed:
            entry = record.setdefault(str(old), {"incomplete": True})   # an interrupted export
            if "retired" not in entry:
                entry.update(retired=when, retired_by="export cleanup")
        _write_record(repo, record)
    return removed


def _read_record(repo: Path) -> dict:
    path = repo / VERSIONS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_record(repo: Path, record: dict) -> None:
    tmp = repo / f".{VERSIONS_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, repo / VERSIONS_FILE)
