#!/usr/bin/env bash
# NVIDIA's go-gpuallocator best-effort policy as a command, and a device plugin built on it
# (tests/gpuallocator: our main.go, deviceplugin/main.go, nvmlmock/, go.mod, go.sum).
#
#   ./scripts/gpuallocator.sh bin               build both if missing, print the path of the gpuallocator binary
#   ./scripts/gpuallocator.sh deviceplugin-bin  build both if missing, print the path of the device plugin
#   ./scripts/gpuallocator.sh run               build both if missing, run gpuallocator (JSON in, JSON out)
#
# The binaries are cached outside the checkout in
# ${XDG_CACHE_HOME:-~/.cache}/toposcale/gpuallocator/<hash of go.mod, go.sum and the .go files>/, so only the
# first run on a machine builds them (about a minute once the modules are downloaded). Needs Go >= 1.26, a C
# compiler (go-nvml is cgo; nothing calls the real NVML) and a Go module proxy for the first build.
# tests/extender/test_allocator_vs_go.py builds them through this script, the kubelet lab
# (lab/kube/kubelet_lab.py) runs the device plugin.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
mod="$root/tests/gpuallocator"

die() { echo "gpuallocator.sh: $*" >&2; exit 1; }

bin() {
  if [ -n "${TOPOSCALE_GPUALLOCATOR_BIN:-}" ] && [ -x "$TOPOSCALE_GPUALLOCATOR_BIN" ]; then
    echo "$TOPOSCALE_GPUALLOCATOR_BIN"; return
  fi
  command -v go >/dev/null 2>&1 || die "Go is not installed: the go-gpuallocator differential test builds tests/gpuallocator with Go >= 1.26 (https://go.dev/dl)"
  local gov; gov="$(go env GOVERSION 2>/dev/null | sed 's/^go//')"
  case "$gov" in
    1.2[6-9]*|1.[3-9][0-9]*|[2-9].*) ;;
    *) die "Go $gov is too old: tests/gpuallocator/go.mod needs Go >= 1.26" ;;
  esac
  local hash; hash="$(cd "$mod" && find . -name '*.go' -o -name go.mod -o -name go.sum | LC_ALL=C sort \
    | xargs cat | sha256sum | cut -c1-12)"
  local out="${XDG_CACHE_HOME:-$HOME/.cache}/toposcale/gpuallocator/$hash"
  if [ ! -x "$out/gpuallocator" ] || [ ! -x "$out/deviceplugin" ]; then
    local tmp="$out.tmp.$$"
    rm -rf "$tmp"; mkdir -p "$tmp"
    echo "gpuallocator.sh: building tests/gpuallocator into $out" >&2
    local log="$tmp/build.log"
    # go-nvml is cgo; its header marks many NVML calls deprecated, which says nothing about this program.
    if ! ( cd "$mod" && CGO_ENABLED=1 CGO_CFLAGS="${CGO_CFLAGS:--O2} -Wno-deprecated-declarations" \
          go build -trimpath -mod=readonly -o "$tmp/" . ./deviceplugin ) >"$log" 2>&1; then
      tail -n 30 "$log" >&2
      die "building tests/gpuallocator failed (log above, whole log in $log)"
    fi
    [ -x "$tmp/gpuallocator" ] && [ -x "$tmp/deviceplugin" ] || die "the build finished without a binary (log: $log)"
    mkdir -p "$(dirname "$out")"
    if ! mv -T "$tmp" "$out" 2>/dev/null; then
      # Another run built it at the same time: keep theirs.
      [ -x "$out/gpuallocator" ] && [ -x "$out/deviceplugin" ] || die "could not move the build into $out"
      rm -rf "$tmp"
    fi
  fi
  echo "$out/gpuallocator"
}

cmd="${1:-}"
case "$cmd" in
  bin) bin ;;
  deviceplugin-bin) b="$(bin)"; echo "$(dirname "$b")/deviceplugin" ;;
  run) b="$(bin)"; exec "$b" ;;
  *) die "usage: gpuallocator.sh bin | deviceplugin-bin | run" ;;
esac
