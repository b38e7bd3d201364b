#!/usr/bin/env bash
# The real helm v4, built from helm.sh/helm/v4 through the Go module proxy (tests/helm/go.mod).
#
#   ./scripts/helm.sh bin         build helm if it is missing, print the path of the binary
#   ./scripts/helm.sh [ARGS...]   build if missing, then run helm ARGS (e.g. ./scripts/helm.sh lint --strict
#                                 deploy/helm/toposcale)
#
# The binary is cached outside the checkout in
# ${XDG_CACHE_HOME:-~/.cache}/toposcale/helm/<version>-<hash of go.mod and go.sum>/helm, so only the first run on
# a machine pays for the build (about 2-4 minutes on 2 cores with an empty Go cache). Needs Go >= 1.26 and a Go
# module proxy. tests/helm/test_chart.py runs it; users install helm their own way (https://helm.sh/docs/intro/install).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
mod="$root/tests/helm"
HELM_VERSION="v4.3.2"

die() { echo "helm.sh: $*" >&2; exit 1; }

helm_bin() {
  # Set by a caller (e.g. scripts/test.sh) that built (or found) the binary once for the whole run.
  if [ -n "${TOPOSCALE_HELM_BIN:-}" ] && [ -x "$TOPOSCALE_HELM_BIN" ]; then
    echo "$TOPOSCALE_HELM_BIN"; return
  fi
  local hash; hash="$(cat "$mod/go.mod" "$mod/go.sum" | sha256sum | cut -c1-12)"
  local out="${XDG_CACHE_HOME:-$HOME/.cache}/toposcale/helm/$HELM_VERSION-$hash"
  if [ ! -x "$out/helm" ]; then
    command -v go >/dev/null 2>&1 || die "Go is not installed: helm is built from source with Go >= 1.26 (https://go.dev/dl)"
    local gov; gov="$(go env GOVERSION 2>/dev/null | sed 's/^go//')"
    case "$gov" in
      1.2[6-9]*|1.[3-9][0-9]*|[2-9].*) ;;
      *) die "Go $gov is too old: tests/helm/go.mod asks for Go >= 1.26" ;;
    esac
    rm -rf "$out.tmp"; mkdir -p "$out.tmp"
    echo "helm.sh: building helm $HELM_VERSION into $out" >&2
    echo "helm.sh: the first build on a machine takes a few minutes; later runs reuse it" >&2
    # As helm's own Makefile stamps a release (internal/version: version, metadata empty, tree clean), so that
    # `helm version` says v4.3.2 and not v4.3+unreleased.
    local v=helm.sh/helm/v4/internal/version
    local ld="-s -w -X $v.version=$HELM_VERSION -X $v.metadata= -X $v.gitTreeState=clean"
    local start=$SECONDS log="$out.tmp/build.log"
    # -v names each package as it is compiled: counted below as progress.
    ( cd "$mod" && CGO_ENABLED=0 go build -v -trimpath -ldflags "$ld" -o "$out.tmp/helm" helm.sh/helm/v4/cmd/helm ) \
      >"$log" 2>&1 &
    local pid=$!
    while kill -0 "$pid" 2>/dev/null; do
      sleep 15
      kill -0 "$pid" 2>/dev/null || break
      # Progress, not a step: it never stops the build (`|| :`). grep -c prints 0 and fails on an empty
      # log, so `|| :` (not `|| echo 0`, which printed a second 0).
      echo "helm.sh: building... $((SECONDS - start)) s, $(grep -c . "$log" 2>/dev/null || :) packages compiled" >&2 || :
    done
    if ! wait "$pid"; then
      tail -n 30 "$log" >&2
      die "building helm failed (log above, whole log in $log)"
    fi
    [ -x "$out.tmp/helm" ] || die "the build finished without helm (log: $log)"
    local got; got="$("$out.tmp/helm" version --template '{{.Version}}')" || die "the built helm does not run (log: $log)"
    [ "$got" = "$HELM_VERSION" ] || die "the built helm says version $got, not $HELM_VERSION"
    rm -rf "$out"; mv "$out.tmp" "$out"
    echo "helm.sh: built in $((SECONDS - start)) s" >&2
  fi
  echo "$out/helm"
}

case "${1:-}" in
  bin) helm_bin ;;
  "") die "usage: helm.sh bin | helm.sh HELM-ARGS..." ;;
  *) bin="$(helm_bin)"; exec "$bin" "$@" ;;
esac
