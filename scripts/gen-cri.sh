#!/usr/bin/env bash
# Regenerates the vendored CRI messages (sentinel/enrichment/cri_api/api_pb2.py{,i}) from the
# vendored upstream api.proto, with the dev dependency grpcio-tools. To move to a newer CRI:
# replace api.proto with the upstream file of the new cri-api tag, update PROTO_SHA256 and
# PROTO_TAG in cri_api/__init__.py, run this, and run tests/containers/test_container_fields.py.
set -euo pipefail
cd "$(dirname "$0")/../sentinel/enrichment/cri_api"
../../../.venv/bin/python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. api.proto
echo "regenerated $(pwd)/api_pb2.py and api_pb2.pyi"
