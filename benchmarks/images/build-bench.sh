#!/usr/bin/env bash
# Build the benchmark image: Debian 12 minbase with the same Debian packages the host runs natively
# (Open MPI, hpcc, CalculiX, OpenBLAS), plus the I/O workload's data, as squashfs.
# Usage: build-bench.sh OUT.sqsh
# The debootstrap tree is cached in $BERTH_BENCH_CACHE (default /var/cache/berth-bench); the I/O
# data lives in the tree (bench-rootfs/bench/io) so the native runs read the very same files.
# Delete that directory to rebuild from scratch. Runs as root (debootstrap needs it).
set -euo pipefail
out=${1:?usage: build-bench.sh OUT.sqsh}
cache=${BERTH_BENCH_CACHE:-/var/cache/berth-bench}
rootfs=$cache/bench-rootfs
mkdir -p "$cache"

# The packages the workloads run, inside and outside (scripts/install-deps.sh installs them on the host).
# python3 and numpy for the Python-imports row (about 60 MB more in the image).
packages=openmpi-bin,libopenmpi3,hpcc,calculix-ccx,libopenblas0-serial,python3,python3-numpy

mirror=$(grep -hoE '^(URIs:|deb) *https?://[^ ]+' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
  | grep -v security | head -n1 | grep -oE 'https?://[^ ]+' || true)
[ -n "$mirror" ] || { echo "build-bench: no Debian mirror found in /etc/apt sources" >&2; exit 1; }

if [ ! -f "$rootfs/.complete" ] || [ "$(cat "$rootfs/.complete")" != "$packages" ]; then
  rm -rf "$rootfs" "$rootfs.tmp"
  echo "build-bench: debootstrap bookworm minbase + $packages from $mirror (a minute or two)" >&2
  debootstrap --variant=minbase --include="$packages" bookworm "$rootfs.tmp" "$mirror" >"$cache/debootstrap.log" 2>&1 \
    || { tail -20 "$cache/debootstrap.log" >&2; exit 1; }
  # Security updates too, when the host has them, so both sides run the same package versions.
  if grep -qs debian-security /etc/apt/sources.list.d/*.sources /etc/apt/sources.list; then
    sec=$(grep -shoE 'https?://[^ ]+debian-security' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list | head -n1 || true)
    echo "deb $sec bookworm-security main" > "$rootfs.tmp/etc/apt/sources.list.d/security.list"
    chroot "$rootfs.tmp" sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get upgrade -y -qq' \
      >>"$cache/debootstrap.log" 2>&1 || { tail -20 "$cache/debootstrap.log" >&2; exit 1; }
  fi
  rm -rf "$rootfs.tmp"/var/cache/apt/archives/*.deb "$rootfs.tmp"/var/lib/apt/lists/*
  echo "$packages" > "$rootfs.tmp/.complete"
  mv "$rootfs.tmp" "$rootfs"
fi

# The I/O workload's data: one large incompressible file and a tree of many small files.
io=$rootfs/bench/io
if [ ! -f "$io/.complete" ]; then
  rm -rf "$io"
  mkdir -p "$io/tree"
  head -c 256M /dev/urandom > "$io/large.bin"
  # 10000 files of 1-4 KiB in 100 directories.
  for d in $(seq -w 0 99); do
    mkdir "$io/tree/d$d"
    for f in $(seq -w 0 99); do
      head -c $(( (10#$d * 100 + 10#$f) % 4 * 1024 + 1024 )) /dev/urandom > "$io/tree/d$d/f$f"
    done
  done
  chmod -R a+rX "$rootfs/bench"
  touch "$io/.complete"
fi

mkdir -p "$rootfs/.berth"
cat > "$rootfs/.berth/image.json" <<'JSON'
{
  "schemaVersion": 1,
  "config": {
    "Env": ["PATH=/usr/local/bin:/usr/local/sbin:/usr/bin:/usr/sbin:/bin:/sbin"],
    "Labels": {"org.opencontainers.image.title": "berth benchmark image"}
  },
  "source": {"built-by": "benchmarks/images/build-bench.sh"}
}
JSON

rm -rf "$rootfs/dev" && mkdir -m 0755 "$rootfs/dev"
tmp="$out.tmp.$$"
mksquashfs "$rootfs" "$tmp" -comp zstd -noappend -quiet -no-progress -e .complete -e bench/io/.complete >/dev/null
chmod 0644 "$tmp"
mv -f "$tmp" "$out"
echo "build-bench: wrote $out ($(du -h "$out" | cut -f1))" >&2
