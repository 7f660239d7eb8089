#!/usr/bin/env bash
# Prints the path of a `promtool` binary (Prometheus's config and rule checker), for the
# monitoring tests and for checking monitoring/ by hand:
#   $(scripts/get_promtool.sh) check config monitoring/prometheus.yml
# or, with the argument `prometheus`, of the Prometheus server of the same package (the alert
# test runs it on 127.0.0.1):
#   $(scripts/get_promtool.sh prometheus) --config.file=... --storage.tsdb.path=...
# Uses one on PATH; otherwise unpacks Debian's prometheus package without installing it (no
# service, no root needed once the apt lists exist) into the cache, once per package version:
#   ${RECFUNNEL_CACHE:-~/.cache/recfunnel}/tools/prometheus-<version>/usr/bin/{promtool,prometheus}
# Everything but the path goes to stderr; exit code 2 with the reason when none can be had.
set -euo pipefail

fail() { echo "error: $*" >&2; exit 2; }
binary="${1:-promtool}"
case "$binary" in promtool|prometheus) ;; *) fail "usage: $0 [promtool|prometheus]" ;; esac

if on_path="$(command -v "$binary" 2>/dev/null)"; then
  echo "$on_path"; exit 0
fi
command -v apt-get >/dev/null 2>&1 && command -v dpkg >/dev/null 2>&1 \
  || fail "$binary is not on PATH and this machine has no apt-get/dpkg to fetch Debian's" \
          "prometheus package; install Prometheus (https://prometheus.io/download/) and put" \
          "$binary on PATH"

candidate() { apt-cache policy prometheus 2>/dev/null | awk '/Candidate:/ {print $2}'; }
version="$(candidate)"
if [ -z "$version" ] || [ "$version" = "(none)" ]; then
  # A fresh machine or container often ships without apt's package lists.
  if [ "$(id -u)" = 0 ]; then
    echo "promtool: apt knows no prometheus package; running apt-get update" >&2
    apt-get update -qq >&2 || fail "apt-get update failed; cannot fetch the prometheus package"
    version="$(candidate)"
  fi
  [ -n "$version" ] && [ "$version" != "(none)" ] \
    || fail "apt has no prometheus package (run 'sudo apt-get update', or put promtool on PATH)"
fi

tools="${RECFUNNEL_CACHE:-$HOME/.cache/recfunnel}/tools"
dest="$tools/prometheus-${version//[^A-Za-z0-9.+-]/_}"
if [ ! -x "$dest/usr/bin/promtool" ]; then
  mkdir -p "$tools"
  exec 9>"$dest.lock"
  flock 9   # two test runs fetching at once wait for each other
  if [ ! -x "$dest/usr/bin/promtool" ]; then
    work="$(mktemp -d "$tools/.prometheus-download.XXXXXX")"
    trap 'rm -rf "$work"' EXIT
    echo "promtool: downloading Debian's prometheus $version (not installed: unpacked to $dest)" >&2
    # _apt cannot write into a private temp dir; download as the calling user.
    (cd "$work" && apt-get download -q -o APT::Sandbox::User="$(id -un)" \
                     "prometheus=$version" >&2) \
      || fail "apt-get download prometheus=$version failed (network? apt sources?)"
    dpkg -x "$work"/prometheus_*.deb "$work/root"
    for b in promtool prometheus; do
      [ -x "$work/root/usr/bin/$b" ] || fail "the prometheus $version package has no usr/bin/$b"
    done
    rm -rf "$dest"
    mv "$work/root" "$dest"      # whole or not at all
  fi
fi
[ -x "$dest/usr/bin/$binary" ] || fail "$dest has no usr/bin/$binary (delete it to unpack again)"
echo "$dest/usr/bin/$binary"
