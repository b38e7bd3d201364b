#!/usr/bin/env bash
# Regenerates the Python code for the kubelet pod-resources API from extender/agent/podresources/api.proto
# (the real k8s.io/kubelet proto; see its header for the commit). Needs grpcio-tools (the `test` extra).
# The proto is compiled from a tree mirroring the import path, so the generated gRPC module imports its
# messages as `toposcale.extender.agent.podresources.api_pb2`; the proto package stays `v1`, which keeps the
# wire method names (`/v1.PodResourcesLister/List`) exactly the kubelet's.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
SRC=extender/agent/podresources
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/toposcale/extender/agent/podresources"
cp "$SRC/api.proto" "$tmp/toposcale/extender/agent/podresources/api.proto"
"$PY" -m grpc_tools.protoc -I "$tmp" --python_out="$tmp" --pyi_out="$tmp" --grpc_python_out="$tmp" \
  "$tmp/toposcale/extender/agent/podresources/api.proto"
cp "$tmp"/toposcale/extender/agent/podresources/api_pb2.py \
   "$tmp"/toposcale/extender/agent/podresources/api_pb2.pyi \
   "$tmp"/toposcale/extender/agent/podresources/api_pb2_grpc.py "$SRC/"
echo "regenerated $SRC/api_pb2.py, api_pb2.pyi, api_pb2_grpc.py"
