# Sentinel image: Debian's bcc (python3-bpfcc), generic kernel headers for bcc's compile step,
# and Sentinel itself. Struct offsets come from the running kernel's BTF, so the headers only
# need to compile, not to match the host kernel.
#
# Build (no registry needed if a local debian:bookworm-slim base exists):
#   podman build -t sentinel .
# Run (least privilege for tracing + BPF LSM; see README "Running in a container"):
#   podman run --rm --privileged --pid=host \
#     -v /sys/kernel/btf:/sys/kernel/btf:ro -v /sys/fs/bpf:/sys/fs/bpf \
#     -v /sys/kernel/tracing:/sys/kernel/tracing -v /sys/fs/cgroup:/sys/fs/cgroup:ro \
#     sentinel run
FROM debian:bookworm-slim

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-bpfcc \
      linux-headers-amd64 ca-certificates \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/sentinel
COPY pyproject.toml README.md ./
COPY sentinel ./sentinel
COPY grammar ./grammar
COPY rules ./rules
COPY bpf ./bpf
RUN python3 -m venv --system-site-packages /opt/sentinel/.venv \
 && /opt/sentinel/.venv/bin/pip install --no-cache-dir . \
 && ln -s /opt/sentinel/.venv/bin/sentinel /usr/local/bin/sentinel

ENV SENTINEL_HOME=/opt/sentinel
ENTRYPOINT ["sentinel"]
CMD ["run"]
