#!/usr/bin/env bash
# The real prometheus-adapter, built from sigs.k8s.io/prometheus-adapter through the Go module proxy
# (benchmarks/prometheus-adapter/go.mod), for benchmarks/bench_adapter.py's custom-metrics comparison.
#
#   ./scripts/prometheus-adapter.sh bin   build it if it is missing, print the path of the binary
#
# Cached outside the checkout in
# ${XDG_CACHE_HOME:-~/.cache}/toposcale/prometheus-adapter/<version>-<hash of go.mod and go.sum>/prometheus-adapter,
# so only the first run on a machine pays for the build. Needs Go >= 1.22 and a Go module proxy (which serves
# v0.12.0 by exact version; it lists none for this module).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
mod="$root/benchmarks/prometheus-adapter"
PA_VERSION="v0.12.0"

die() { echo "prometheus-adapter.sh: $*" >&2; exit 1; }

pa_bin() {
  if [ -n "${TOPOSCALE_PROMETHEUS_ADAPTER_BIN:-}" ] && [ -x "$TOPOSCALE_PROMETHEUS_ADAPTER_BIN" ]; then
    echo "$TOPOSCALE_PROMETHEUS_ADAPTER_BIN"; return
  fi
  local hash; hash="$(cat "$mod/go.mod" "$mod/go.sum" | sha256sum | cut -c1-12)"
  local out="${XDG_CACHE_HOME:-$HOME/.cache}/toposcale/prometheus-adapter/$PA_VERSION-$hash"
  if [ ! -x "$out/prometheus-adapter" ]; then
    command -v go >/dev/null 2>&1 || die "Go is not installed: prometheus-adapter is built from source (https://go.dev/dl)"
    rm -rf "$out.tmp"; mkdir -p "$out.tmp"
    echo "prometheus-adapter.sh: building prometheus-adapter $PA_VERSION into $out" >&2
    local start=$SECONDS log="$out.tmp/build.log"
    # -v names each package as it is compiled: counted below as progress. nice: the machine is shared.
    ( cd "$mod" && CGO_ENABLED=0 nice go build -v -trimpath -ldflags "-s -w" -o "$out.tmp/prometheus-adapter" \
        sigs.k8s.io/prometheus-adapter/cmd/adapter ) >"$log" 2>&1 &
    local pid=$!
    while kill -0 "$pid" 2>/dev/null; do
      sleep 15
      kill -0 "$pid" 2>/dev/null || break
      # Progress, not a step: it never stops the build (`|| :`). grep -c prints 0 and fails on an empty
      # log, so `|| :` (not `|| echo 0`, which printed a second 0).
      echo "prometheus-adapter.sh: building... $((SECONDS - start)) s, $(grep -c . "$log" 2>/dev/null || :) packages compiled" >&2 || :
    done
    if ! wait "$pid"; then
      tail -n 30 "$log" >&2
      die "building prometheus-adapter failed (log above, whole log in $log)"
    fi
    [ -x "$out.tmp/prometheus-adapter" ] || die "the build finished without prometheus-adapter (log: $log)"
    rm -rf "$out"; mv "$out.tmp" "$out"
    echo "prometheus-adapter.sh: built in $((SECONDS - start)) s" >&2
  fi
  echo "$out/prometheus-adapter"
}

case "${1:-}" in
  bin) pa_bin ;;
  *) die "usage: prometheus-adapter.sh bin" ;;
esac
