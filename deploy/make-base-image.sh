#!/usr/bin/env bash
# Makes the image's base, localhost/debian:bookworm-slim, without any container registry:
# debootstrap a minimal Debian bookworm root filesystem from the Debian mirror (an apt package
# registry) and import it into podman. Skipped when the image already exists (cached).
#
#   bash deploy/make-base-image.sh            # then: podman build -t localhost/sentinel .
set -euo pipefail
IMAGE=${BASE_IMAGE:-localhost/debian:bookworm-slim}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

if podman image exists "$IMAGE"; then
  echo "make-base-image: $IMAGE exists (cached)"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "make-base-image: install debootstrap" >&2; exit 1; }
dir=$(mktemp -d /var/tmp/sentinel-rootfs.XXXXXX)
trap 'rm -rf "$dir"' EXIT
debootstrap --variant=minbase bookworm "$dir" "$MIRROR" >"$dir.log" 2>&1 \
  || { tail -n 30 "$dir.log" >&2; rm -f "$dir.log"; exit 1; }
rm -f "$dir.log"
# Slim it like the official -slim image: no apt lists, docs or caches in the base layer.
rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/*.bin "$dir"/usr/share/doc/* \
  "$dir"/usr/share/man/* "$dir"/usr/share/info/*
tar -C "$dir" -c . | podman import - "$IMAGE" >/dev/null
echo "make-base-image: imported $IMAGE"
