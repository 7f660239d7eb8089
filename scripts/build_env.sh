#!/usr/bin/env bash
# Builds the project's virtual environment from the lock files, once per lock hash.
# Usage: scripts/build_env.sh VENV_DIR PYTHON
# The venv lives outside the clone (see Makefile) and is marked complete only when every step
# succeeded, so an interrupted build is redone rather than half-used.
set -euo pipefail
venv="$1"; python="${2:-python3.11}"
here="$(cd "$(dirname "$0")/.." && pwd)"

if ! command -v "$python" >/dev/null 2>&1; then
  echo "error: '$python' not found; recfunnel needs Python 3.11 (set PYTHON=/path/to/python3.11)" >&2
  exit 2
fi
version="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [ "$version" != "3.11" ]; then
  echo "error: '$python' is Python $version; the Merlin pin set needs Python 3.11 (set PYTHON=...)" >&2
  exit 2
fi

mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9   # two clones building the same environment at once wait for each other
if [ -f "$venv/.complete" ]; then exit 0; fi
rm -rf "$venv"
start=$(date +%s)
echo "[env 1/4] creating venv $venv with $python"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade "pip==24.0"
n=$(grep -cvE '^\s*(#|$)' "$here/requirements.lock")
echo "[env 2/4] installing $n locked packages (about 4 minutes on 2 cores, 2.2 GB)"
"$venv/bin/python" -m pip install --disable-pip-version-check --no-deps --progress-bar on \
  -r "$here/requirements.lock"
echo "[env 3/4] installing the Triton server binary (nvidia-pytriton, --no-deps)"
"$venv/bin/python" -m pip install --disable-pip-version-check --no-deps --progress-bar on \
  -r "$here/requirements-server.lock"
echo "[env 4/4] checking the environment"
# pytriton's own declared dependencies are deliberately absent; everything else must be consistent.
"$venv/bin/python" -m pip check | grep -v '^nvidia-pytriton ' | tee "$venv/pip-check.txt" || true
if [ -s "$venv/pip-check.txt" ]; then
  echo "error: pip check found conflicts (see above); fix requirements.lock" >&2
  exit 1
fi
"$venv/bin/python" -c "import nvtabular, merlin.models, tensorflow, faiss, tritonclient.grpc" 2>/dev/null \
  || { echo "error: the Merlin stack does not import in $venv" >&2; exit 1; }
touch "$venv/.complete"
echo "[env] ready in $(( $(date +%s) - start )) s: $venv"
