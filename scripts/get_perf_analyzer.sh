#!/usr/bin/env bash
# Prints the path of a `perf_analyzer` binary (Triton's own load generator), for the serving
# benchmark (benchmarks/perf_analyzer.py) and its test:
#   $(scripts/get_perf_analyzer.sh) -m funnel -u 127.0.0.1:8001 -i grpc --concurrency-range 4
# Uses one on PATH; otherwise fetches it once into the cache, outside the Merlin venv:
#   ${RECFUNNEL_CACHE:-~/.cache/recfunnel}/tools/perf_analyzer-<version>/bin/perf_analyzer
# Which package: the `perf-analyzer` wheels (2.58-2.60) are tagged manylinux_2_38 and need
# glibc 2.38 and GLIBCXX_3.4.32; Debian 12 has 2.36, so they do not run here. The tritonclient
# wheel of the same release as the pip server (Triton 2.51) carries bin/perf_analyzer built for
# glibc <= 2.34; it links libb64.so.0d and libcudart.so.12 (never called on CPU), which we copy
# from the nvidia-pytriton wheel's libraries (the venv's, else a downloaded wheel). bin/ holds
# a wrapper that puts them on LD_LIBRARY_PATH; the binary itself is libexec/perf_analyzer.
# Everything but the path goes to stderr; exit code 2 with the reason when none can be had.
set -euo pipefail

fail() { echo "error: $*" >&2; exit 2; }

version="2.51.0"                                 # Triton release of nvidia-pytriton==0.7.0
package="tritonclient==$version"
pytriton="nvidia-pytriton==0.7.0"

# One on PATH only if it runs: the Merlin venv's tritonclient 2.35.0 installs a
# bin/perf_analyzer too, which cannot find libb64.so.0d.
if on_path="$(command -v perf_analyzer 2>/dev/null)" && "$on_path" --version >/dev/null 2>&1; then
  echo "$on_path"; exit 0
fi
tools="${RECFUNNEL_CACHE:-$HOME/.cache/recfunnel}/tools"
dest="$tools/perf_analyzer-$version"
# `perf_analyzer --version` prints "Perf Analyzer Version 2.51.0 (commit unknown)" on stderr.
works() { [ -x "$dest/bin/perf_analyzer" ] \
          && [[ "$("$dest/bin/perf_analyzer" --version 2>&1)" == *"Version $version"* ]]; }
if ! works; then
  python="${PYTHON:-python3}"
  command -v "$python" >/dev/null 2>&1 || fail "no $python to fetch $package with (set PYTHON=...)"
  mkdir -p "$tools"
  exec 9>"$dest.lock"
  flock 9   # two test runs fetching at once wait for each other
  if ! works; then
    work="$(mktemp -d "$tools/.perf_analyzer-download.XXXXXX")"
    trap 'rm -rf "$work"' EXIT
    echo "perf_analyzer: fetching $package (for its bin/perf_analyzer) into $dest" >&2
    "$python" -m pip download --quiet --disable-pip-version-check --no-deps \
        --only-binary=:all: -d "$work/wheels" "$package" >&2 \
      || fail "pip download $package failed (is the package registry reachable?)"
    # The venv's pytriton libraries, else those of a downloaded wheel (55 MB).
    libs="$("$python" -c 'from importlib import metadata as m
print(m.distribution("nvidia-pytriton").locate_file("nvidia_pytriton.libs"))' 2>/dev/null || true)"
    if [ -z "$libs" ] || [ ! -d "$libs" ]; then
      echo "perf_analyzer: $python has no nvidia-pytriton; fetching $pytriton for libb64 and" \
           "libcudart" >&2
      "$python" -m pip download --quiet --disable-pip-version-check --no-deps \
          --only-binary=:all: -d "$work/wheels" "$pytriton" >&2 \
        || fail "pip download $pytriton failed (is the package registry reachable?)"
      libs=""
    fi
    # Unpacked by Python's zipfile: no unzip needed. Members by pattern, the soname as the name.
    "$python" - "$work" "$libs" <<'EOF' || fail "could not unpack perf_analyzer and its libraries"
import re
import shutil
import sys
import zipfile
from pathlib import Path

work, libs = Path(sys.argv[1]), sys.argv[2]
root = work / "root"
for d in ("bin", "libexec", "lib"):
    (root / d).mkdir(parents=True)
WANTED = {r"libb64-[0-9a-f]+\.so\.0d$": "libb64.so.0d",
          r"libcudart-[0-9a-f]+\.so\.12[.0-9]*$": "libcudart.so.12"}


def copy_libs(names, opener):
    found = {}
    for name in names:
        for pattern, soname in WANTED.items():
            if re.search(pattern, name.rsplit("/", 1)[-1]):
                with opener(name) as src, open(root / "lib" / soname, "wb") as out:
                    shutil.copyfileobj(src, out)
                found[soname] = name
    missing = set(WANTED.values()) - set(found)
    if missing:
        sys.exit(f"no {', '.join(sorted(missing))} among nvidia-pytriton's libraries")


for wheel in (work / "wheels").glob("*.whl"):
    with zipfile.ZipFile(wheel) as z:
        if wheel.name.startswith("tritonclient-"):
            member = next(n for n in z.namelist() if n.endswith(".data/data/bin/perf_analyzer"))
            with z.open(member) as src, open(root / "libexec" / "perf_analyzer", "wb") as out:
                shutil.copyfileobj(src, out)
        elif not libs:
            copy_libs([n for n in z.namelist() if n.startswith("nvidia_pytriton.libs/")], z.open)
if libs:
    copy_libs([str(p) for p in Path(libs).iterdir()], lambda p: open(p, "rb"))
EOF
    [ -s "$work/root/libexec/perf_analyzer" ] || fail "$package has no bin/perf_analyzer"
    chmod +x "$work/root/libexec/perf_analyzer"
    cat > "$work/root/bin/perf_analyzer" <<'EOF'
#!/bin/sh
# perf_analyzer with the libraries it links (copied from nvidia-pytriton) on LD_LIBRARY_PATH.
here="$(cd "$(dirname "$0")/.." && pwd)"
LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$here/libexec/perf_analyzer" "$@"
EOF
    chmod +x "$work/root/bin/perf_analyzer"
    echo "$package" > "$work/root/.package"
    rm -rf "$dest"
    mv "$work/root" "$dest"      # whole or not at all
    works || fail "$dest/bin/perf_analyzer --version does not run on $(uname -sm):" \
                  "$("$dest/bin/perf_analyzer" --version 2>&1 | tail -3)"
  fi
fi
echo "$dest/bin/perf_analyzer"
