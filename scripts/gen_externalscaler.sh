#!/usr/bin/env bash
# Regenerates the Python code for KEDA's external scaler API from adapter/keda/externalscaler.proto (KEDA's
# proto; see its header for the commit). Needs grpcio-tools (the `test` extra).
# The proto is compiled from a tree mirroring the import path, so the generated gRPC module imports its
# messages as `toposcale.adapter.keda.externalscaler_pb2`; the proto package stays `externalscaler`, which
# keeps the wire method names (`/externalscaler.ExternalScaler/IsActive`) exactly KEDA's.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
SRC=adapter/keda
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/toposcale/adapter/keda"
cp "$SRC/externalscaler.proto" "$tmp/toposcale/adapter/keda/externalscaler.proto"
"$PY" -m grpc_tools.protoc -I "$tmp" --python_out="$tmp" --pyi_out="$tmp" --grpc_python_out="$tmp" \
  "$tmp/toposcale/adapter/keda/externalscaler.proto"
cp "$tmp"/toposcale/adapter/keda/externalscaler_pb2.py \
   "$tmp"/toposcale/adapter/keda/externalscaler_pb2.pyi \
   "$tmp"/toposcale/adapter/keda/externalscaler_pb2_grpc.py "$SRC/"
echo "regenerated $SRC/externalscaler_pb2.py, externalscaler_pb2.pyi, externalscaler_pb2_grpc.py"
