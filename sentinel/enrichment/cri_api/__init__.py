"""The Kubernetes CRI API (``runtime.v1``) messages, generated from the upstream proto.

Provenance: ``api.proto`` is ``pkg/apis/runtime/v1/api.proto`` of kubernetes/cri-api at tag
v0.36.3 (commit 1733b6a9fa123c5887eefa14523c532b12827f73, Kubernetes 1.36), unmodified, with
that repository's Apache-2.0 ``LICENSE`` beside it. ``api_pb2.py`` and ``api_pb2.pyi`` are what
``python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. api.proto`` (grpcio-tools 1.85)
generates from it; ``scripts/gen-cri.sh`` redoes that, and a test regenerates the descriptor
and compares it with the vendored one.

Why vendored rather than generated at build time: the code that runs is the code under review;
installing Sentinel (editable installs, the image's ``pip install``) needs no protoc step and no
grpcio-tools (a compiler toolchain in wheel form) at run time; mypy sees the typed ``.pyi``.
The cost, keeping it in step with the proto, is one script and one test. Only the messages are
used: methods are called by name (``container_cri.py``), so no generated service code exists.
"""

PROTO_SHA256 = "6d130c2651d335bfc755d25efc63072a1cd1eba3591ead6422dc0a27f20167f3"
PROTO_TAG = "v0.36.3"
