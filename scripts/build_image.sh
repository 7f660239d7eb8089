#!/usr/bin/env bash
# Builds the CPU image (docker/Dockerfile.cpu) with podman, or docker when there is no podman,
# FROM a base given as the build argument BASE:
#   --base IMAGE   that image;
#   otherwise      python:3.11-slim when a registry serves it, else a Debian bookworm base made
#                  here with debootstrap from Debian's mirror (localhost/bookworm-min, kept).
# Usage: scripts/build_image.sh [--base IMAGE] [--tag TAG]        (run as root for podman here)
# The build log goes to stderr; stdout ends with the lines "image TAG", "base BASE",
# "size_bytes N" and "build_s N". Exit code 2 with the reason when a tool is missing.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
fail() { echo "error: $*" >&2; exit 2; }

tag="recfunnel:cpu"; base="${RECFUNNEL_IMAGE_BASE:-}"
while [ $# -gt 0 ]; do
  case "$1" in
    --base) base="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    *) fail "usage: $0 [--base IMAGE] [--tag TAG]" ;;
  esac
done

if command -v podman >/dev/null 2>&1; then
  # Flags our machines need (crun and runc refuse the defaults there: docker/README.md).
  engine=(podman --runtime runc --cgroup-manager cgroupfs)
  limits=(--ulimit nofile=1024:1024 --ulimit nproc=4096:4096)
elif command -v docker >/dev/null 2>&1; then
  engine=(docker); limits=()
else
  fail "neither podman nor docker is installed (Debian: apt-get install -y podman runc debootstrap)"
fi

if [ -z "$base" ]; then
  if timeout 120 "${engine[@]}" pull -q docker.io/library/python:3.11-slim >&2 2>/dev/null; then
    base="docker.io/library/python:3.11-slim"
  else
    base="localhost/bookworm-min"
    echo "build_image: no registry serves python:3.11-slim; using $base" >&2
    if ! "${engine[@]}" image exists "$base" 2>/dev/null; then
      command -v debootstrap >/dev/null 2>&1 \
        || fail "no registry and no debootstrap to make a base (apt-get install -y debootstrap)"
      rootfs="$(mktemp -d)"
      trap 'rm -rf "$rootfs"' EXIT
      echo "build_image: debootstrap --variant=minbase bookworm (about a minute)" >&2
      debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >&2
      tar -C "$rootfs" -c . | "${engine[@]}" import - "$base" >&2
    fi
  fi
fi

# pip inside the build trusts what pip here trusts (a TLS-inspecting proxy's CA bundle).
build_args=(--build-arg "BASE=$base")
ca="${PIP_CERT:-}"
[ -n "$ca" ] || ca="$(python3 -m pip config get global.cert 2>/dev/null || true)"
if [ -n "$ca" ] && [ -f "$ca" ]; then
  build_args+=(--volume "$ca:/run/host-ca-bundle.crt:ro" --build-arg "PIP_CERT=/run/host-ca-bundle.crt")
fi

start=$(date +%s)
"${engine[@]}" build "${limits[@]}" "${build_args[@]}" -f "$here/docker/Dockerfile.cpu" \
  -t "$tag" "$here" >&2
seconds=$(( $(date +%s) - start ))
size="$("${engine[@]}" image inspect "$tag" --format '{{.Size}}')"
echo "image $tag"
echo "base $base"
echo "size_bytes $size"
echo "build_s $seconds"
