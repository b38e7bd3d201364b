#!/usr/bin/env bash
# labels.Parse of k8s.io/apimachinery v0.37.2 (the version Kubernetes v1.37.2 uses) as a command:
# tests/kube/cmd/labelsparse, built in the tests/kube module, whose go.mod pins apimachinery with the rest of
# Kubernetes v1.37.2. The differential test of the adapter's selector parser runs it
# (tests/adapter/test_selectors_vs_go.py).
#
#   ./scripts/labelsparse.sh bin     build it if missing, print the path of the binary
#   ./scripts/labelsparse.sh run     build it if missing, run it (JSON lines on stdin, answers on stdout)
#
# The binary is cached outside the checkout in
# ${XDG_CACHE_HOME:-~/.cache}/toposcale/labelsparse/<hash of tests/kube/go.mod, go.sum and main.go>/labelsparse,
# so only the first run on a machine builds it (seconds once the modules are downloaded; scripts/kube.sh
# downloads them too). Needs Go >= 1.26 and a Go module proxy for the first build.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
mod="$root/tests/kube"
main="$mod/cmd/labelsparse/main.go"

die() { echo "labelsparse.sh: $*" >&2; exit 1; }

bin() {
  # Set by a caller (e.g. scripts/test.sh) that built (or found) the binary once for the whole run.
  if [ -n "${TOPOSCALE_LABELSPARSE_BIN:-}" ] && [ -x "$TOPOSCALE_LABELSPARSE_BIN" ]; then
    echo "$TOPOSCALE_LABELSPARSE_BIN"; return
  fi
  local hash; hash="$(cat "$mod/go.mod" "$mod/go.sum" "$main" | sha256sum | cut -c1-12)"
  local out="${XDG_CACHE_HOME:-$HOME/.cache}/toposcale/labelsparse/$hash"
  if [ ! -x "$out/labelsparse" ]; then
    command -v go >/dev/null 2>&1 || die "Go is not installed: the labels.Parse differential test builds tests/kube/cmd/labelsparse with Go >= 1.26 (https://go.dev/dl)"
    local gov; gov="$(go env GOVERSION 2>/dev/null | sed 's/^go//')"
    case "$gov" in
      1.2[6-9]*|1.[3-9][0-9]*|[2-9].*) ;;
      *) die "Go $gov is too old: tests/kube/go.mod needs Go >= 1.26" ;;
    esac
    local tmp="$out.tmp.$$"
    rm -rf "$tmp"; mkdir -p "$tmp"
    echo "labelsparse.sh: building tests/kube/cmd/labelsparse into $out" >&2
    local log="$tmp/build.log"
    if ! ( cd "$mod" && CGO_ENABLED=0 go build -trimpath -mod=readonly -o "$tmp/labelsparse" ./cmd/labelsparse ) \
        >"$log" 2>&1; then
      tail -n 30 "$log" >&2
      die "building tests/kube/cmd/labelsparse failed (log above, whole log in $log)"
    fi
    [ -x "$tmp/labelsparse" ] || die "the build finished without a binary (log: $log)"
    mkdir -p "$(dirname "$out")"
    if ! mv -T "$tmp" "$out" 2>/dev/null; then
      # Another run built it at the same time: keep theirs.
      [ -x "$out/labelsparse" ] || die "could not move the build into $out"
      rm -rf "$tmp"
    fi
  fi
  echo "$out/labelsparse"
}

cmd="${1:-}"
case "$cmd" in
  bin) bin ;;
  run) b="$(bin)"; exec "$b" ;;
  *) die "usage: labelsparse.sh bin | run" ;;
esac
