#!/usr/bin/env bash
# The real KEDA operator and metrics server, built from github.com/kedacore/keda/v2 through the Go module proxy
# (tests/keda/go.mod), for tests/keda/test_keda_operator.py.
#
#   ./scripts/keda.sh bin-dir    build what is missing, print the directory holding keda (cmd/operator),
#                                keda-adapter (cmd/adapter, the metrics server) and crds/*.yaml (config/crd/bases
#                                of the same release: ScaledObject, ScaledJob, TriggerAuthentication, ...)
#
# Cached outside the checkout in ${XDG_CACHE_HOME:-~/.cache}/toposcale/keda/<version>-<hash of go.mod, go.sum>/,
# so only the first run on a machine pays for the build (measured in tests/keda/README.md). Needs Go >= 1.26 and a
# Go module proxy. v2.21.0, not the newer v2.21.1: v2.21.1's go.mod asks for Go >= 1.27.4, newer than any Go this
# project may use (tests/keda/README.md).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
mod="$root/tests/keda"
KEDA_VERSION="v2.21.0"

die() { echo "keda.sh: $*" >&2; exit 1; }

bin_dir() {
  # Set by scripts/test.sh after it built (or found) the binaries once for the whole run.
  if [ -n "${TOPOSCALE_KEDA_BIN_DIR:-}" ] && [ -x "$TOPOSCALE_KEDA_BIN_DIR/keda" ]; then
    echo "$TOPOSCALE_KEDA_BIN_DIR"; return
  fi
  local hash; hash="$(cat "$mod/go.mod" "$mod/go.sum" | sha256sum | cut -c1-12)"
  local out="${XDG_CACHE_HOME:-$HOME/.cache}/toposcale/keda/$KEDA_VERSION-$hash"
  if [ ! -x "$out/keda" ] || [ ! -x "$out/keda-adapter" ] || [ ! -f "$out/crds/keda.sh_scaledobjects.yaml" ]; then
    command -v go >/dev/null 2>&1 || die "Go is not installed: KEDA is built from source with Go >= 1.26 (https://go.dev/dl)"
    local gov; gov="$(go env GOVERSION 2>/dev/null | sed 's/^go//')"
    case "$gov" in
      1.2[6-9]*|1.[3-9][0-9]*|[2-9].*) ;;
      *) die "Go $gov is too old: github.com/kedacore/keda/v2 $KEDA_VERSION needs Go >= 1.26" ;;
    esac
    rm -rf "$out.tmp"; mkdir -p "$out.tmp/crds"
    echo "keda.sh: building the KEDA operator and metrics server ($KEDA_VERSION) into $out" >&2
    echo "keda.sh: the first build on a machine takes long (every scaler's cloud SDK is compiled in); later runs reuse it" >&2
    # As KEDA's own Makefile stamps a release, so the operator logs "KEDA Version: v2.21.0".
    local v=github.com/kedacore/keda/v2/version
    local ld="-s -w -X $v.Version=$KEDA_VERSION -X $v.GitCommit=$KEDA_VERSION"
    local start=$SECONDS log="$out.tmp/build.log"
    # -v names each package as it is compiled: counted below as progress. nice: the machine is shared.
    ( cd "$mod" && go mod download github.com/kedacore/keda/v2 && CGO_ENABLED=0 nice go build -v -trimpath -ldflags "$ld" \
        -o "$out.tmp/keda" github.com/kedacore/keda/v2/cmd/operator \
      && CGO_ENABLED=0 nice go build -v -trimpath -ldflags "$ld" \
        -o "$out.tmp/keda-adapter" github.com/kedacore/keda/v2/cmd/adapter ) >"$log" 2>&1 &
    local pid=$!
    while kill -0 "$pid" 2>/dev/null; do
      sleep 30
      kill -0 "$pid" 2>/dev/null || break
      # Progress, not a step: it never stops the build (`|| :`). grep -c prints 0 and fails on an empty
      # log, so `|| :` (not `|| echo 0`, which printed a second 0).
      echo "keda.sh: building... $((SECONDS - start)) s, $(grep -c . "$log" 2>/dev/null || :) packages compiled" >&2 || :
    done
    if ! wait "$pid"; then
      tail -n 30 "$log" >&2
      die "building KEDA failed (log above, whole log in $log)"
    fi
    local b
    for b in keda keda-adapter; do
      [ -x "$out.tmp/$b" ] || die "the build finished without $b (log: $log)"
    done
    # The CRDs of the same release, so the tests need no Go module cache at run time.
    local src; src="$(cd "$mod" && go list -m -f '{{.Dir}}' github.com/kedacore/keda/v2)"
    cp "$src"/config/crd/bases/*.yaml "$out.tmp/crds/"
    rm -rf "$out"; mv "$out.tmp" "$out"
    echo "keda.sh: built in $((SECONDS - start)) s" >&2
  fi
  echo "$out"
}

case "${1:-}" in
  bin-dir) bin_dir ;;
  *) die "usage: keda.sh bin-dir" ;;
esac
