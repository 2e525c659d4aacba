# Sentinel image: Debian's bcc (python3-bpfcc), generic kernel headers for bcc's compile step,
# and Sentinel itself. Struct offsets come from the running kernel's BTF, so the headers only
# need to compile, not to match the host kernel (deploy/entrypoint.sh links them in at start).
#
# Build. No container registry is needed: make the base locally first (debootstrap + import),
#   bash deploy/make-base-image.sh
#   podman build -t localhost/sentinel .
# (with Docker Hub at hand: --build-arg BASE=docker.io/library/debian:bookworm-slim)
#
# Run: the exact privileges and mounts, each explained, are in docs/operations.md ("Running in
# a container"; tests/ops/test_image.py runs that line):
#   podman run --rm --pid=host --cap-drop=all --cap-add=SYS_ADMIN,BPF,PERFMON,SYS_PTRACE,SYSLOG \
#     --security-opt label=disable -v /sys/fs/cgroup:/sys/fs/cgroup:ro \
#     -v /var/lib/sentinel:/var/lib/sentinel localhost/sentinel [doctor]
ARG BASE=localhost/debian:bookworm-slim
FROM ${BASE}

# One layer, cached across code changes. --no-install-recommends and no apt lists keep it slim;
# linux-headers-amd64 is the bulk (it pulls gcc for kbuild) and is what bcc compiles against.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv python3-bpfcc linux-headers-amd64 ca-certificates \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/*

# Dependencies before the code, so editing Sentinel does not re-download them. Behind a
# TLS-intercepting proxy, mount its CA bundle for the build only (it does not enter the image):
#   podman build -v /etc/ssl/certs/ca-certificates.crt:/run/build-ca.crt:ro \
#     --build-arg PIP_CERT=/run/build-ca.crt -t localhost/sentinel .
ARG PIP_CERT=
WORKDIR /opt/sentinel
RUN python3 -m venv --system-site-packages /opt/sentinel/.venv \
 && /opt/sentinel/.venv/bin/pip install --no-cache-dir ${PIP_CERT:+--cert "$PIP_CERT"} \
      "lark>=1.1.9" "pyyaml>=6.0" "pydantic>=2.6" "structlog>=24.1" "grpcio>=1.85" \
      "protobuf>=7.35.1,<8" "setuptools>=68" wheel

COPY pyproject.toml README.md ./
COPY sentinel ./sentinel
COPY grammar ./grammar
COPY rules ./rules
COPY bpf ./bpf
COPY deploy/entrypoint.sh /usr/local/bin/sentinel-entrypoint
RUN /opt/sentinel/.venv/bin/pip install --no-cache-dir --no-deps --no-build-isolation . \
 && ln -s /opt/sentinel/.venv/bin/sentinel /usr/local/bin/sentinel

ENV SENTINEL_HOME=/opt/sentinel PYTHONDONTWRITEBYTECODE=1
ENTRYPOINT ["/usr/local/bin/sentinel-entrypoint"]
CMD ["run"]
