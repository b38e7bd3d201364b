#!/usr/bin/env bash
# Builds the toposcale image from ./Dockerfile with buildah (no daemon: --storage-driver vfs, --isolation
# chroot, as root) and smoke-tests it with `buildah run`, the image's entrypoint and user, on a read-only root.
#
#   ./scripts/build-image.sh [--base IMAGE] [--tag NAME]
#
# Default base: Debian bookworm made by debootstrap (minbase + python3, python3-venv), committed as a local image
# and cached in the buildah storage under ~/.cache/toposcale/image/ (tag keyed by what makes it). The Python
# packages are wheels built here with `pip wheel` (cached, keyed by pyproject.toml and the Python version) into
# wheels/, so the build installs with pip --no-index.
# Push afterwards with: buildah --root <root> --runroot <runroot> --storage-driver vfs push NAME docker://...
set -euo pipefail
cd "$(dirname "$0")/.."

BASE=""
TAG=""
while [ $# -gt 0 ]; do
  case "$1" in
    --base) BASE="${2:?--base needs an image}"; shift 2 ;;
    --tag) TAG="${2:?--tag needs a name}"; shift 2 ;;
    -h|--help) sed -n 2,12p "$0"; exit 0 ;;
    *) echo "build-image.sh: unknown argument $1 (usage: $0 [--base IMAGE] [--tag NAME])" >&2; exit 2 ;;
  esac
done

t0=$SECONDS
step_t=$SECONDS
step() { echo "==> [$(printf '%4d' $((SECONDS - t0))) s] $*"; step_t=$SECONDS; }
took() { echo "    ($(( SECONDS - step_t )) s)"; }
die() { echo "build-image.sh: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (buildah with --isolation chroot and vfs storage needs it)"
command -v buildah >/dev/null || die "buildah is missing (apt-get install buildah)"
PY="${PYTHON:-python3}"
"$PY" -m pip --version >/dev/null 2>&1 || die "$PY has no pip (set PYTHON=/path/to/python3.11)"

CACHE="${TOPOSCALE_IMAGE_CACHE:-$HOME/.cache/toposcale/image}"
mkdir -p "$CACHE"
B=(buildah --root "$CACHE/storage" --runroot "$CACHE/runroot" --storage-driver vfs)
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p;T;q' pyproject.toml)"
TAG="${TAG:-localhost/toposcale:$VERSION}"

# Everything this run creates, removed on any exit (mounts first: the smoke container's root is bound ro).
CLEAN_MOUNTS=()
CLEAN_CTRS=()
CLEAN_DIRS=()
SERVER_PID=""
# Cleanup is not a step of the build: every command in it ends in `|| ...`, because errexit holds inside an
# EXIT trap too, so one failing command (`wait` answering 143 for the extender it killed, an `rm` that cannot
# remove a folder) would skip the unmounts after it and turn a finished build's exit status into its own.
# The status of the run is kept as it was.
cleanup() {
  local rc=$? i c d
  if [ -n "$SERVER_PID" ]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  for ((i = ${#CLEAN_MOUNTS[@]} - 1; i >= 0; i--)); do umount "${CLEAN_MOUNTS[i]}" 2>/dev/null || true; done
  for c in "${CLEAN_CTRS[@]}"; do "${B[@]}" rm "$c" >/dev/null 2>&1 || true; done
  for d in "${CLEAN_DIRS[@]}"; do rm -rf "$d" 2>/dev/null || echo "build-image.sh: could not remove $d (left behind)" >&2; done
  exit "$rc"
}
trap cleanup EXIT

# ---------------------------------------------------------------- base
if [ -z "$BASE" ]; then
  command -v debootstrap >/dev/null || die "debootstrap is missing (apt-get install debootstrap)"
  SUITE=bookworm
  MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
  INCLUDE=python3,python3-venv
  # Bump RECIPE when the trimming below changes, so a cached base made the old way is not reused.
  RECIPE=1
  key="$(printf '%s\n' "$SUITE" minbase "$INCLUDE" "$MIRROR" "$RECIPE" "$(dpkg-query -W -f '${Version}' debootstrap)" \
    | sha256sum | cut -c1-12)"
  BASE="localhost/toposcale-base:$SUITE-$key"
  if "${B[@]}" inspect --type image "$BASE" >/dev/null 2>&1; then
    step "base $BASE (cached)"
  else
    step "debootstrap $SUITE (minbase, $INCLUDE) -> $BASE"
    root="$(mktemp -d /var/tmp/toposcale-rootfs.XXXXXX)"
    CLEAN_DIRS+=("$root")
    debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$root/fs" "$MIRROR" >"$root/log" 2>&1 \
      || { tail -20 "$root/log" >&2; die "debootstrap failed (log above)"; }
    # Not needed to run Python: package downloads and lists, docs, man pages, translations; host files
    # debootstrap copied in (resolv.conf, hostname) are the runtime's to provide.
    rm -rf "$root/fs"/var/cache/apt/archives/*.deb "$root/fs"/var/lib/apt/lists/* "$root/fs"/usr/share/doc/* \
      "$root/fs"/usr/share/man/* "$root/fs"/usr/share/locale/* "$root/fs"/usr/share/info/* \
      "$root/fs"/var/log/*.log "$root/fs"/var/cache/debconf/*-old
    : >"$root/fs/etc/resolv.conf"; : >"$root/fs/etc/hostname"
    pyver="$(chroot "$root/fs" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    took
    step "commit the base image"
    ctr="$("${B[@]}" from scratch)"; CLEAN_CTRS+=("$ctr")
    mnt="$("${B[@]}" mount "$ctr")"
    cp -a "$root/fs/." "$mnt/"
    "${B[@]}" umount "$ctr" >/dev/null
    "${B[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
      --label "io.toposcale.python=$pyver" --label "io.toposcale.base-recipe=$SUITE-minbase-$INCLUDE" \
      --cmd /bin/sh "$ctr"
    "${B[@]}" commit -q "$ctr" "$BASE" >/dev/null
    took
  fi
fi

base_py="$("${B[@]}" inspect --type image --format '{{index .OCIv1.Config.Labels "io.toposcale.python"}}' "$BASE" \
  2>/dev/null || true)"
if [ -z "$base_py" ] || [ "$base_py" = "<no value>" ]; then
  step "python version of $BASE"
  ctr="$("${B[@]}" from --pull=missing "$BASE")"; CLEAN_CTRS+=("$ctr")
  base_py="$("${B[@]}" run --isolation chroot "$ctr" -- python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
fi
host_py="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
[ "$base_py" = "$host_py" ] || die "the base has Python $base_py but $PY is $host_py: wheels are built for the \
host's Python; set PYTHON to a python$base_py"

# ---------------------------------------------------------------- wheels
wkey="$( { cat pyproject.toml; "$PY" -c 'import sys, platform; print(sys.version, platform.machine())'; } \
  | sha256sum | cut -c1-12)"
wcache="$CACHE/wheels-$wkey"
if [ -f "$wcache/.complete" ]; then
  step "wheels (cached in $wcache)"
else
  step "pip wheel: toposcale's dependencies for Python $host_py -> $wcache"
  rm -rf "$wcache.tmp" && mkdir -p "$wcache.tmp"
  # setuptools and wheel: the build backend, so the image builds toposcale's own wheel without an index.
  "$PY" -m pip wheel -q --disable-pip-version-check --wheel-dir "$wcache.tmp" . 'setuptools>=68' wheel
  rm -f "$wcache.tmp"/toposcale-*.whl
  touch "$wcache.tmp/.complete"
  rm -rf "$wcache" && mv "$wcache.tmp" "$wcache"
  took
fi
find wheels -maxdepth 1 -name '*.whl' -delete
cp -l "$wcache"/*.whl wheels/ 2>/dev/null || cp "$wcache"/*.whl wheels/
echo "    $(ls wheels/*.whl | wc -l) wheels, $(du -sh --apparent-size wheels | cut -f1)"

# ---------------------------------------------------------------- build
step "buildah build --build-arg BASE=$BASE -t $TAG (pip --no-index: wheels/ only)"
# chroot isolation cannot take --network none; the Dockerfile sets PIP_NO_INDEX when wheels/ is filled.
"${B[@]}" build --isolation chroot --pull=never --layers=false -q \
  --build-arg "BASE=$BASE" -t "$TAG" -f Dockerfile . >/dev/null
"${B[@]}" rmi --prune >/dev/null 2>&1 || true  # the previous build's image, now untagged (vfs: full copies)
IMAGE_ID="$("${B[@]}" inspect --type image --format '{{.FromImageID}}' "$TAG")"
took

# ---------------------------------------------------------------- smoke tests
step "smoke tests: buildah run with the image's entrypoint and user, root filesystem read-only"
ctr="$("${B[@]}" from --pull=never "$TAG")"; CLEAN_CTRS+=("$ctr")
mnt="$("${B[@]}" mount "$ctr")"
work="$(mktemp -d /var/tmp/toposcale-smoke.XXXXXX)"; CLEAN_DIRS+=("$work")
mkdir -p "$work/tmp" "$work/run"
chmod 1777 "$work/tmp"
# The container's root, bound read-only onto itself: buildah chroots into it, so every write outside the
# mounts below fails with EROFS. /run is buildah's (it puts /run/.containerenv there; checked empty after).
touch "$mnt/etc/hosts" "$mnt/etc/resolv.conf" "$mnt/etc/hostname"; mkdir -p "$mnt/fixtures"  # mount points
mount --bind "$mnt" "$mnt"; CLEAN_MOUNTS+=("$mnt")
mount -o remount,bind,ro "$mnt"
mount --bind "$work/run" "$mnt/run"; CLEAN_MOUNTS+=("$mnt/run")

mapfile -t ENTRY < <("${B[@]}" inspect --type image --format '{{range .OCIv1.Config.Entrypoint}}{{println .}}{{end}}' "$TAG" | sed '/^$/d')
USER_CFG="$("${B[@]}" inspect --type image --format '{{.OCIv1.Config.User}}' "$TAG")"
[ "${#ENTRY[@]}" -gt 0 ] || die "the image has no entrypoint"
echo "    entrypoint: ${ENTRY[*]}   user: $USER_CFG"
RUN=("${B[@]}" run --isolation chroot -v "$work/tmp:/tmp:rw" -v "$PWD/tests/fixtures:/fixtures:ro" "$ctr" --)

out="$("${RUN[@]}" "${ENTRY[@]}" --version)"
echo "    toposcale --version: $out"
[ "$out" = "toposcale $VERSION" ] || die "--version said '$out', expected 'toposcale $VERSION'"

"${RUN[@]}" "${ENTRY[@]}" agent --once --output - --from-topo-file /fixtures/topologies/hgx-h100-nvswitch-8gpu.txt \
  >"$work/hgx.json"
"${RUN[@]}" "${ENTRY[@]}" agent --once --output /tmp/l40s.json \
  --from-topo-file /fixtures/topologies/l40s-4gpu-two-per-socket.txt
"$PY" - "$work/hgx.json" "$work/tmp/l40s.json" <<'EOF'
import json, sys
for path in sys.argv[1:]:
    docs = json.load(open(path))
    topo, alloc = docs["toposcale.io/gpu-topology"], docs["toposcale.io/gpu-allocation"]
    assert topo["gpus"] and alloc["allocated"] == [], path
    print(f"    agent --once: {len(topo['gpus'])} GPUs, valid JSON documents ({path.rsplit('/', 1)[1]})")
EOF
owner="$(stat -c %u "$work/tmp/l40s.json")"
[ "$owner" != 0 ] || die "the agent wrote /tmp/l40s.json as uid 0: the image's user is root"
echo "    the agent's file in /tmp is owned by uid $owner"

port="$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"${RUN[@]}" "${ENTRY[@]}" extender --standalone --host 127.0.0.1 --port "$port" >"$work/extender.log" 2>&1 &
SERVER_PID=$!
"$PY" - "$port" "$work/hgx.json" "$work/tmp/l40s.json" "$SERVER_PID" <<'EOF'
import json, os, sys, time, urllib.request

port, hgx, l40s, server = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
url = f"http://127.0.0.1:{port}"
for _ in range(300):
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=2) as r:
            health = json.load(r)
            break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit("the extender never answered /healthz")
assert health["mode"] == "standalone", health
print(f"    extender /healthz: {health}")

# The Nodes carry what the image's own agent printed: the annotations a real agent would publish.
def node(name, path):
    docs = json.load(open(path))
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "annotations": {k: json.dumps(v) for k, v in docs.items()}},
            "spec": {}, "status": {"allocatable": {"nvidia.com/gpu": "8"}}}
res = {"requests": {"nvidia.com/gpu": "4"}, "limits": {"nvidia.com/gpu": "4"}}
pod = {"apiVersion": "v1", "kind": "Pod",
       "metadata": {"name": "vllm", "namespace": "default",
                    "annotations": {"toposcale.io/required-scope": "nvlink"}},
       "spec": {"containers": [{"name": "vllm", "image": "vllm/vllm-openai", "resources": res}]},
       "status": {"phase": "Pending"}}
body = {"Pod": pod, "Nodes": {"items": [node("hgx", hgx), node("l40s", l40s)]}, "NodeNames": None}
req = urllib.request.Request(url + "/filter", data=json.dumps(body).encode(),
                             headers={"Content-Type": "application/json"})
with urllib.request.urlopen(req, timeout=10) as r:
    answer = json.load(r)
kept = [n["metadata"]["name"] for n in answer["Nodes"]["items"]]
assert kept == ["hgx"], answer
assert "l40s" in answer["FailedNodes"] or "l40s" in answer.get("FailedAndUnresolvableNodes", {}), answer
print(f"    extender /filter (4 GPUs, scope nvlink): kept {kept}, l40s refused")

# The serving process, seen from here: every process running toposcale's interpreter is the non-root user.
uids = {}
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        if b"/opt/toposcale/bin/toposcale" in argv and str(port).encode() in argv:
            uids[pid] = [line.split()[1] for line in open(f"/proc/{pid}/status") if line.startswith("Uid:")][0]
    except OSError:
        pass
assert uids and all(u != "0" for u in uids.values()), uids
print(f"    extender process(es) {sorted(uids)} run as uid {sorted(set(uids.values()))}")
EOF
kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""

# The read-only root is real: root itself (uid 0) cannot write outside /tmp.
if "${B[@]}" run --isolation chroot --user 0:0 -v "$work/tmp:/tmp:rw" "$ctr" -- sh -c 'touch /opt/toposcale/probe' >/dev/null 2>"$work/ro.err"; then
  die "a write to /opt succeeded: the root filesystem is not read-only"
fi
grep -q "Read-only file system" "$work/ro.err" || { cat "$work/ro.err" >&2; die "unexpected error writing /opt"; }
echo "    a write to /opt fails: Read-only file system; the runs wrote only to /tmp: $(cd "$work/tmp" && find . -mindepth 1 | tr '\n' ' ')"
[ -z "$(ls -A "$work/run")" ] || die "something was left in /run: $(ls -A "$work/run")"
took

# ---------------------------------------------------------------- size
step "image size and what takes the space"
# A report, never a reason to fail the build: it runs with errexit and pipefail off (`|| ...` below), and
# nothing in it pipes into a reader that stops early (`head` exiting while `sort` still writes killed `sort`
# with SIGPIPE, and pipefail failed a finished, smoke-tested build at random): awk reads all of its input.
size_report() {
  SIZE="$("${B[@]}" images --format '{{.Size}}' --filter "id=$IMAGE_ID" | awk 'NR == 1')"
  local sp d
  sp="$(echo "$mnt"/opt/toposcale/lib/python3*/site-packages)"
  # One du per folder: a single du counts a folder once, so /usr and /opt would vanish under / .
  for d in / /usr /opt/toposcale; do
    printf '    %5d MB  %s\n' "$(du -sm "$mnt$d" | cut -f1)" "$d"
  done
  echo "    largest in /usr (base) and site-packages (toposcale and its dependencies):"
  du -sm "$mnt"/usr/lib/* "$mnt"/usr/share/* "$sp"/* 2>/dev/null | sort -rn \
    | awk -v mnt="$mnt" 'NR <= 12 { sub(mnt, "", $2); printf "    %5d MB  %s\n", $1, $2 }'
}
SIZE="?"
size_report || echo "    (the size report was incomplete; the image is built and tested)"

echo "==> [$(printf '%4d' $((SECONDS - t0))) s] done: $TAG"
echo "image ID: $IMAGE_ID"
echo "image size: $SIZE"
echo "smoke tests passed"
