#!/usr/bin/env bash
# Build the demo image: a Debian 12 minbase with Open MPI and a small MPI test program, as squashfs.
# Usage: build-demo.sh OUT.sqsh
# The debootstrap tree is cached in $BERTH_IMAGE_CACHE (default /var/cache/berth-test) because it
# takes a minute; delete that directory to rebuild from scratch. Runs as root (debootstrap needs it).
set -euo pipefail
out=${1:?usage: build-demo.sh OUT.sqsh}
here=$(cd "$(dirname "$0")" && pwd)
cache=${BERTH_IMAGE_CACHE:-/var/cache/berth-test}
rootfs=$cache/demo-rootfs
mkdir -p "$cache"

# Use the same Debian mirror as the host's apt configuration.
mirror=$(grep -hoE '^(URIs:|deb) *https?://[^ ]+' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
  | grep -v security | head -n1 | grep -oE 'https?://[^ ]+' || true)
[ -n "$mirror" ] || { echo "build-demo: no Debian mirror found in /etc/apt sources" >&2; exit 1; }

if [ ! -f "$rootfs/.complete" ]; then
  rm -rf "$rootfs" "$rootfs.tmp"
  echo "build-demo: debootstrap bookworm minbase + openmpi-bin from $mirror (about a minute)" >&2
  debootstrap --variant=minbase --include=openmpi-bin,libopenmpi3 bookworm "$rootfs.tmp" "$mirror" >"$cache/debootstrap.log" 2>&1 \
    || { tail -20 "$cache/debootstrap.log" >&2; exit 1; }
  rm -rf "$rootfs.tmp"/var/cache/apt/archives/*.deb "$rootfs.tmp"/var/lib/apt/lists/*
  touch "$rootfs.tmp/.complete"
  mv "$rootfs.tmp" "$rootfs"
fi

# The test programs, built against the host's Open MPI (the same Debian package as in the image).
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mpicc -O2 -o "$stage/mpi-hello" "$here/mpi-hello.c"
cc -O2 -o "$stage/suid-probe" "$here/suid-probe.c"
install -m 0755 "$stage/mpi-hello" "$rootfs/usr/local/bin/mpi-hello"
# A setuid-root program: inside the container it must not gain privileges (nosuid, no_new_privs).
install -m 4755 -o root -g root "$stage/suid-probe" "$rootfs/usr/local/bin/suid-probe"

# The image config berth reads (same schema berth-image writes): an entrypoint that marks the
# environment and runs the command, a default command, an image variable and a working dir.
install -m 0755 "$here/demo-entrypoint.sh" "$rootfs/usr/local/bin/demo-entrypoint"
mkdir -p "$rootfs/.berth" "$rootfs/srv/demo"
cat > "$rootfs/.berth/image.json" <<'JSON'
{
  "schemaVersion": 1,
  "config": {
    "Env": ["PATH=/usr/local/bin:/usr/local/sbin:/usr/bin:/usr/sbin:/bin:/sbin", "DEMO_IMAGE=berth-demo"],
    "Entrypoint": ["/usr/local/bin/demo-entrypoint"],
    "Cmd": ["cat", "/etc/os-release"],
    "WorkingDir": "/srv/demo",
    "Labels": {"org.opencontainers.image.title": "berth demo"}
  },
  "source": {"built-by": "tests/images/build-demo.sh"}
}
JSON

# A clean image has an empty /dev (the runtime provides it), like OCI images.
rm -rf "$rootfs/dev" && mkdir -m 0755 "$rootfs/dev"
tmp="$out.tmp.$$"
mksquashfs "$rootfs" "$tmp" -comp zstd -noappend -quiet -no-progress -e .complete >/dev/null
mv -f "$tmp" "$out"
echo "build-demo: wrote $out ($(du -h "$out" | cut -f1))" >&2
