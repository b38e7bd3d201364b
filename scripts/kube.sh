#!/usr/bin/env bash
# A real Kubernetes control plane on loopback, built from the Kubernetes sources (tests/kube/go.mod).
#
#   ./scripts/kube.sh bin-dir     build what is missing, print the directory holding kube-apiserver,
#                                 kube-controller-manager, kube-scheduler, etcd and kubelet
#   ./scripts/kube.sh up DIR      start etcd + kube-apiserver (aggregator on) + kube-controller-manager
#                                 + kube-scheduler on free loopback ports with PKI made for the run;
#                                 writes DIR/admin.kubeconfig, DIR/env, DIR/*.log (DIR: new or empty)
#        ... up DIR --kubelets N  and N real nodes (root): containerd + the kubelet + a device plugin each,
#                                 in DIR/kubelets/ (lab/kube/kubelet_lab.py says what runs and how)
#   ./scripts/kube.sh down DIR    stop exactly the processes of that run (by PID) and remove what `up` wrote,
#                                 DIR itself only if `up` made it; a DIR `up` did not make (no .kube-sh-up
#                                 marker) or that does not exist is refused: exit 1, nothing touched
#
# Builds are cached outside the checkout in ${XDG_CACHE_HOME:-~/.cache}/toposcale/kube/<version>-<go.sum hash>/,
# so only the first run on a machine pays for them (about 6-10 minutes on 2 cores). Needs Go >= 1.26 and a Go
# module proxy. The control plane itself is lab/kube/cluster.py; this script is its command line.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
mod="$root/tests/kube"
K8S_VERSION="v1.37.2"

die() { echo "kube.sh: $*" >&2; exit 1; }

bin_dir() {
  # Set by scripts/test.sh after it built (or found) the binaries once for the whole run.
  if [ -n "${TOPOSCALE_KUBE_BIN_DIR:-}" ] && [ -x "$TOPOSCALE_KUBE_BIN_DIR/kube-apiserver" ] && [ -x "$TOPOSCALE_KUBE_BIN_DIR/kubelet" ]; then
    echo "$TOPOSCALE_KUBE_BIN_DIR"; return
  fi
  command -v go >/dev/null 2>&1 || die "Go is not installed: the control plane is built from source with Go >= 1.26 (https://go.dev/dl)"
  local gov; gov="$(go env GOVERSION 2>/dev/null | sed 's/^go//')"
  case "$gov" in
    1.2[6-9]*|1.[3-9][0-9]*|[2-9].*) ;;
    *) die "Go $gov is too old: k8s.io/kubernetes $K8S_VERSION needs Go >= 1.26" ;;
  esac
  local hash; hash="$(cat "$mod/go.mod" "$mod/go.sum" "$mod/cmd/etcd/main.go" | sha256sum | cut -c1-12)"
  local out="${XDG_CACHE_HOME:-$HOME/.cache}/toposcale/kube/$K8S_VERSION-$hash"
  # kubelet: the real nodes of `up DIR --kubelets N` (lab/kube/kubelet_lab.py); built with the rest,
  # or alone into a cache that predates it (the build cache makes that a few minutes, not a rebuild).
  local want=(kube-apiserver kube-controller-manager kube-scheduler etcd kubelet)
  local missing=() pkgs=() b
  for b in "${want[@]}"; do
    [ -x "$out/$b" ] && continue
    missing+=("$b")
    case "$b" in etcd) pkgs+=(./cmd/etcd) ;; *) pkgs+=("k8s.io/kubernetes/cmd/$b") ;; esac
  done
  if [ ${#missing[@]} -gt 0 ]; then
    mkdir -p "$out.tmp"
    echo "kube.sh: building ${missing[*]} ($K8S_VERSION) into $out" >&2
    echo "kube.sh: the first build on a machine takes about 6-10 minutes on 2 cores (some 3,000 packages); later runs reuse it" >&2
    local ld="-s -w"
    local v
    for v in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ld="$ld -X $v.gitVersion=$K8S_VERSION -X $v.gitMajor=1 -X $v.gitMinor=37 -X $v.gitTreeState=clean"
    done
    local start=$SECONDS log="$out.tmp/build.log"
    # -v names each package as it is compiled: counted below as progress. CGO_ENABLED=0 for the kubelet too
    # (it runs without cgo), so it shares the build cache of the control plane's packages.
    ( cd "$mod" && CGO_ENABLED=0 go build -v -trimpath -ldflags "$ld" -o "$out.tmp/" "${pkgs[@]}" ) >"$log" 2>&1 &
    local pid=$!
    while kill -0 "$pid" 2>/dev/null; do
      sleep 30
      kill -0 "$pid" 2>/dev/null || break
      # Progress, not a step: it never stops the build (`|| :`). grep -c prints 0 and fails on an empty
      # log, so `|| :` (not `|| echo 0`, which printed a second 0).
      echo "kube.sh: building... $((SECONDS - start)) s, $(grep -c . "$log" 2>/dev/null || :) packages compiled" >&2 || :
    done
    if ! wait "$pid"; then
      tail -n 30 "$log" >&2
      die "building the Kubernetes components failed (log above, whole log in $log)"
    fi
    for b in "${missing[@]}"; do
      [ -x "$out.tmp/$b" ] || die "the build finished without $b (log: $log)"
    done
    # One rename per binary (atomic): a cache that had the others keeps them.
    mkdir -p "$out"
    for b in "${missing[@]}"; do mv -f "$out.tmp/$b" "$out/$b"; done
    mv -f "$log" "$out/build.log"
    rm -rf "$out.tmp"
    echo "kube.sh: built in $((SECONDS - start)) s" >&2
  fi
  echo "$out"
}

venv_python() {
  if [ -x "$root/.venv/bin/python" ]; then echo "$root/.venv/bin/python"; else echo python3; fi
}

# DIR as the caller means it: relative to the directory kube.sh was run from, not to the checkout it cds to
# (`kube.sh down .` meant the checkout itself).
abs_dir() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }

cmd="${1:-}"
case "$cmd" in
  bin-dir) bin_dir ;;
  up)
    kubelets=0
    if [ $# -eq 4 ] && [ "$3" = "--kubelets" ]; then kubelets="$4"; set -- "$1" "$2"; fi
    [ $# -eq 2 ] && [ -n "$2" ] || die "usage: kube.sh up DIR [--kubelets N]"
    case "$kubelets" in ''|*[!0-9]*) die "--kubelets needs a number, got '$kubelets'" ;; esac
    dir="$(abs_dir "$2")"
    bins="$(bin_dir)"
    if [ "$kubelets" -eq 0 ]; then
      cd "$root" && exec "$(venv_python)" -m lab.kube.cluster up "$dir" --bin-dir "$bins"
    fi
    # Real nodes: containerd + the kubelet + the device plugin per node (lab/kube/kubelet_lab.py).
    [ "$(id -u)" -eq 0 ] || die "--kubelets needs root (containerd, cgroups, network namespaces)"
    dp="$("$root/scripts/gpuallocator.sh" deviceplugin-bin)"
    cd "$root"
    "$(venv_python)" -m lab.kube.cluster up "$dir" --bin-dir "$bins"
    if ! "$(venv_python)" -m lab.kube.kubelet_lab up "$dir" --count "$kubelets" --deviceplugin "$dp"; then
      "$(venv_python)" -m lab.kube.cluster down "$dir" || :
      exit 1
    fi
    ;;
  down)
    [ $# -eq 2 ] && [ -n "$2" ] || die "usage: kube.sh down DIR"
    dir="$(abs_dir "$2")"
    cd "$root"
    # The real nodes first (if `up --kubelets` started any), then the control plane; a refused DIR is
    # refused by both without a word from the first.
    lab_rc=0
    if [ -f "$dir/kubelets/lab.json" ]; then
      "$(venv_python)" -m lab.kube.kubelet_lab down "$dir" || lab_rc=$?
    fi
    "$(venv_python)" -m lab.kube.cluster down "$dir"
    exit "$lab_rc"
    ;;
  *) die "usage: kube.sh bin-dir | up DIR [--kubelets N] | down DIR" ;;
esac
