#!/bin/sh
# Image entrypoint. bcc compiles its programs at run time against
# /lib/modules/$(uname -r)/build, and the host's kernel release is only known now, so point it
# at the image's generic Debian headers (they only need to compile: struct offsets come from
# the running kernel's BTF). Then hand over to sentinel with the given arguments.
k="/lib/modules/$(uname -r)"
if [ ! -e "$k/build" ]; then
  hdr=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n1)
  common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n1)
  if [ -n "$hdr" ] && mkdir -p "$k" 2>/dev/null; then
    ln -sfn "$hdr" "$k/build"
    ln -sfn "$common" "$k/source"
  fi
fi
exec /opt/sentinel/.venv/bin/sentinel "$@"
