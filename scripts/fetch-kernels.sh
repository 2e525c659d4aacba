#!/usr/bin/env bash
# Fetch the Debian kernels the VM suites boot (scripts/vm-kernels.conf) into build/kernels/NAME.
#
#   scripts/fetch-kernels.sh [NAME...]      (default: every kernel in the table)
#
# Each kernel is Debian's linux-image-amd64 of one suite, downloaded through a PRIVATE apt
# configuration (its own sources list, lists, cache and an empty dpkg status under
# build/kernels/apt/SUITE): the host's apt sources and installed packages are never touched, so
# nothing on the host gets upgraded. The image package is unpacked (dpkg-deb -x, not installed)
# to build/kernels/NAME/root/{boot,lib/modules/KVER}; virtme-ng finds the modules there (the
# guest sees them at /lib/modules/KVER). bcc inside the guest compiles against the host's
# generic headers: /lib/modules/KVER/build and source link to them. That is safe because the
# sensor reads every kernel struct at offsets from the running kernel's BTF, never from headers.
#
# The kernel's BTF is extracted to build/kernels/NAME/vmlinux.btf (scripts/extract-btf.py): the
# host-side tests check offsets, helpers and LSM hooks of every VM kernel from it, before booting.
#
# A cached kernel is not fetched again (delete build/kernels/NAME to refresh it). A kernel that
# cannot be fetched fails the script, naming it: the VM suites must not silently shrink.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
conf="$repo/scripts/vm-kernels.conf"
cache="$repo/build/kernels"

fail() {
  echo "fetch-kernels: $*" >&2
  exit 1
}

# The kernels of the table, as "NAME SUITE" lines.
table() {
  awk '!/^[[:space:]]*(#|$)/ { print $1, $2 }' "$conf"
}

# The host's generic headers (installed by setup.sh: linux-headers-amd64).
headers() {
  hdr=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n1)
  common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n1)
  [ -n "$hdr" ] && [ -n "$common" ] || fail "no /usr/src/linux-headers-*-amd64 (apt-get install linux-headers-amd64)"
}

# Point the kernel's build/source links at the host's headers (also re-done for cached kernels,
# so a headers upgrade on the host does not leave dangling links).
link_headers() {
  local moddir="$1"
  ln -sfn "$hdr" "$moddir/build"
  ln -sfn "$common" "$moddir/source"
}

extract_btf() {
  /usr/bin/python3 "$repo/scripts/extract-btf.py" "$2" "$3.tmp" || fail "$1: cannot extract BTF from $2"
  mv "$3.tmp" "$3"
}

archive_uri() {
  local uri=""
  if [ -r /etc/apt/sources.list.d/debian.sources ]; then
    uri=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources)
  fi
  echo "${uri:-http://deb.debian.org/debian}"
}

fetch() {
  local name="$1" suite="$2"
  local dir="$cache/$name" apt="$cache/apt/$suite"
  if [ -r "$dir/kernel.env" ]; then
    # shellcheck disable=SC1091
    . "$dir/kernel.env"
    [ -r "$dir/root/boot/vmlinuz-$KVER" ] || fail "$dir/kernel.env names a missing image; delete $dir and rerun"
    link_headers "$dir/root/lib/modules/$KVER"
    [ -s "$dir/vmlinux.btf" ] || extract_btf "$name" "$dir/root/boot/vmlinuz-$KVER" "$dir/vmlinux.btf"
    echo "fetch-kernels: $name: cached ($PACKAGE $VERSION)"
    return
  fi
  echo "fetch-kernels: $name: fetching Debian $suite's linux-image-amd64"
  mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial"
  : >"$apt/status"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $(archive_uri) $suite main" \
    >"$apt/sources.list"
  local opts=(
    -o "Dir::Etc::sourcelist=$apt/sources.list" -o Dir::Etc::sourceparts=/dev/null
    -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o "Dir::State::status=$apt/status"
    -o APT::Sandbox::User=root -q
  )
  apt-get "${opts[@]}" update >"$apt/update.log" 2>&1 ||
    fail "$name: apt-get update for Debian $suite failed (see $apt/update.log): $(tail -n2 "$apt/update.log" | tr '\n' ' ')"
  # linux-image-amd64 is a metapackage: the image is the package it depends on.
  local pkg
  pkg=$(apt-cache "${opts[@]}" depends linux-image-amd64 2>/dev/null |
    awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }')
  [ -n "$pkg" ] || fail "$name: Debian $suite has no linux-image-amd64 (archive $(archive_uri))"
  local version
  version=$(apt-cache "${opts[@]}" show "$pkg" | awk '/^Version:/ { print $2; exit }')
  local tmp
  tmp=$(mktemp -d "$cache/.fetch-$name.XXXXXX")
  trap 'rm -rf "$tmp"' RETURN
  (cd "$tmp" && apt-get "${opts[@]}" download "$pkg" >download.log 2>&1) ||
    fail "$name: downloading $pkg failed: $(tail -n2 "$tmp/download.log" | tr '\n' ' ')"
  dpkg-deb -x "$tmp"/"$pkg"_*.deb "$tmp/root" || fail "$name: cannot unpack $pkg"
  # trixie's packages are /usr-merged (usr/lib/modules): give the tree one layout.
  if [ ! -e "$tmp/root/lib" ] && [ -d "$tmp/root/usr/lib/modules" ]; then
    ln -s usr/lib "$tmp/root/lib"
  fi
  local kver=""
  [ -d "$tmp/root/lib/modules" ] && kver=$(ls "$tmp/root/lib/modules" | head -n1)
  [ -n "$kver" ] && [ -r "$tmp/root/boot/vmlinuz-$kver" ] || fail "$name: $pkg holds no /boot/vmlinuz-KVER"
  # trixie compresses modules with xz; virtme-ng's initramfs inserts them with an insmod that
  # cannot decompress (it only unpacks .zst itself), so store them plain.
  find "$tmp/root/lib/modules/$kver" -name '*.ko.xz' -exec xz -d {} + ||
    fail "$name: cannot decompress the modules of $kver"
  # Debian's packages leave modules.dep to their postinst; virtme-ng and modprobe need it.
  depmod -b "$tmp/root" "$kver" || fail "$name: depmod failed for $kver"
  link_headers "$tmp/root/lib/modules/$kver"
  extract_btf "$name" "$tmp/root/boot/vmlinuz-$kver" "$tmp/vmlinux.btf"
  rm -rf "$dir"
  mkdir -p "$dir"
  mv "$tmp/root" "$dir/root"
  mv "$tmp/vmlinux.btf" "$dir/vmlinux.btf"
  printf 'KVER=%s\nPACKAGE=%s\nVERSION=%s\nSUITE=%s\n' "$kver" "$pkg" "$version" "$suite" \
    >"$dir/kernel.env"
  echo "fetch-kernels: $name: $pkg $version ($kver)"
}

headers
mkdir -p "$cache"
wanted=("$@")
found=0
while read -r name suite; do
  if ((${#wanted[@]})) && [[ ! " ${wanted[*]} " == *" $name "* ]]; then
    continue
  fi
  found=$((found + 1))
  fetch "$name" "$suite"
done < <(table)
if ((${#wanted[@]})) && ((found != ${#wanted[@]})); then
  fail "unknown kernel name in '${wanted[*]}' (known: $(table | cut -d' ' -f1 | tr '\n' ' '))"
fi
