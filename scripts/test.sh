#!/usr/bin/env bash
# Runs the whole test suite the way CI does: installs what is missing, then ruff and pytest.
# Real parts: the Debian `prometheus` package (started on loopback by the tests), kubectl from PyPI, and a real
# Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler) and kubelets
# (with Debian's containerd, runc and CNI plugins) built from the Kubernetes sources with Go >= 1.26 by
# scripts/kube.sh (the first build on a machine takes minutes; cached),
# the real helm v4 (scripts/helm.sh), NVIDIA's go-gpuallocator (scripts/gpuallocator.sh, needs a C compiler),
# apimachinery's labels.Parse (scripts/labelsparse.sh),
# KEDA (scripts/keda.sh) and the container image built with buildah (scripts/build-image.sh, needs root or sudo).
set -euo pipefail
cd "$(dirname "$0")/.."

t0=$SECONDS
phase_start=$SECONDS
timings=()
phase() { timings+=("$(printf '%-34s %5d s' "$1" $((SECONDS - phase_start)))"); phase_start=$SECONDS; }
report() {
  echo "==> where the time went"
  for t in "${timings[@]}"; do echo "    $t"; done
  echo "    $(printf '%-34s %5d s' total $((SECONDS - t0)))"
}
# On any exit, a failed phase included: what ran so far and how long it took. A report: errexit holds in
# the trap too, so `|| :` keeps a failing report (a closed stdout) from replacing the run's own status.
finished=""
trap 'rc=$?; [ -z "$finished" ] && phase "(failed in this phase)"; report || :; exit $rc' EXIT

SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
apt_install() {  # Debian packages, quietly, without their recommends
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  echo "==> installing the Debian prometheus package (real Prometheus for the tests)"
  apt_install prometheus
  # The package starts a system Prometheus on :9090; the tests start their own on free ports.
  $SUDO systemctl stop prometheus >/dev/null 2>&1 || $SUDO service prometheus stop >/dev/null 2>&1 || true
fi
phase "prometheus package"

# buildah (daemonless image builds) and debootstrap (the image's Debian base): scripts/build-image.sh.
if ! command -v buildah >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1; then
  echo "==> installing the Debian buildah and debootstrap packages (the container image build)"
  apt_install buildah debootstrap
fi
phase "buildah + debootstrap packages"

# containerd, runc, Debian's CNI plugins and a static busybox: the real nodes of tests/kubelet (containerd on
# private sockets, the kubelet built by kube.sh below; lab/kube/kubelet_lab.py).
busybox_static="$(dpkg-query -W -f '${Status}' busybox-static 2>/dev/null || :)"
if ! command -v containerd >/dev/null 2>&1 || ! command -v runc >/dev/null 2>&1 || [ ! -x /usr/lib/cni/bridge ] \
    || [ "$busybox_static" != "install ok installed" ]; then
  echo "==> installing containerd, runc, containernetworking-plugins and busybox-static (real kubelets' nodes)"
  apt_install containerd runc containernetworking-plugins busybox-static
  # The package enables a system containerd where systemd runs; the tests start their own.
  $SUDO systemctl stop containerd >/dev/null 2>&1 || $SUDO service containerd stop >/dev/null 2>&1 || true
fi
phase "containerd + CNI packages"

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip >/dev/null
.venv/bin/pip install -q -e '.[test]'
phase "python venv and packages"

echo "==> Kubernetes components (scripts/kube.sh bin-dir)"
if ! bins="$(./scripts/kube.sh bin-dir)"; then
  echo "test.sh: the real Kubernetes components could not be built; the suite needs them (see above)" >&2
  exit 1
fi
export TOPOSCALE_KUBE_BIN_DIR="$bins"
echo "    $bins"
phase "kubernetes build (cached after 1st)"

# The other real peers, built from Go modules the same way (cached after the first build):
echo "==> helm (scripts/helm.sh bin)"
helm_bin="$(./scripts/helm.sh bin)" || { echo "test.sh: helm could not be built (see above)" >&2; exit 1; }
export TOPOSCALE_HELM_BIN="$helm_bin"
echo "    $helm_bin"
echo "==> go-gpuallocator probe and device plugin (scripts/gpuallocator.sh bin)"
gpa_bin="$(./scripts/gpuallocator.sh bin)" || { echo "test.sh: the go-gpuallocator probe could not be built" >&2; exit 1; }
export TOPOSCALE_GPUALLOCATOR_BIN="$gpa_bin"
echo "    $gpa_bin"
# labels.Parse of k8s.io/apimachinery v0.37.2, for the adapter's selector differential test (seconds: the
# tests/kube module, whose modules the Kubernetes build above downloaded).
echo "==> labels.Parse probe (scripts/labelsparse.sh bin)"
lp_bin="$(./scripts/labelsparse.sh bin)" || { echo "test.sh: the labels.Parse probe could not be built" >&2; exit 1; }
export TOPOSCALE_LABELSPARSE_BIN="$lp_bin"
echo "    $lp_bin"
phase "helm, gpuallocator, labels.Parse"

# KEDA's operator and metrics server (tests/keda): every scaler's cloud SDK is compiled in, about 3,700
# packages, 9-13 minutes on 2 cores the first time, then cached like the others.
echo "==> KEDA operator and metrics server (scripts/keda.sh bin-dir)"
keda_dir="$(./scripts/keda.sh bin-dir)" || { echo "test.sh: KEDA could not be built (see above)" >&2; exit 1; }
export TOPOSCALE_KEDA_BIN_DIR="$keda_dir"
echo "    $keda_dir"
phase "keda build (cached after 1st)"

# The image users deploy, built for real (buildah, no daemon) and smoke-tested: --version, the agent's
# documents, the extender answering /healthz and a filter, as the non-root user on a read-only root.
# The debootstrap base and the wheels are cached in ~/.cache/toposcale/image/.
echo "==> container image (scripts/build-image.sh)"
${SUDO:+$SUDO --preserve-env=HOME,TOPOSCALE_IMAGE_CACHE,DEBIAN_MIRROR} env PYTHON="$PWD/.venv/bin/python" ./scripts/build-image.sh \
  || { echo "test.sh: the container image build or its smoke tests failed (see above)" >&2; exit 1; }
phase "container image (buildah)"

echo "==> ruff"
.venv/bin/ruff check .
phase "ruff"

echo "==> pytest"
set +e
.venv/bin/python -m pytest -q --durations=10 "$@"
rc=$?
set -e
phase "pytest"
finished=1
exit $rc
