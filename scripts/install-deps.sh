#!/usr/bin/env bash
# Install what berth needs to build, run and be tested on Debian 12, and prepare the host the
# way a cluster node is prepared: /dev/fuse usable by users (the distro default, 0666), and a
# non-root test user with a supplementary group. Run as root. Idempotent.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "install-deps: run as root" >&2; exit 1; }

packages=(
  squashfs-tools squashfuse fuse3     # images: mksquashfs/unsquashfs; squashfuse: tests' other-user FUSE mounts, ch-run
  squashfs-tools-ng                   # berth-image import: tar2sqfs (layers streamed into squashfs)
  openmpi-bin libopenmpi-dev          # MPI jobs in the demo and the tests (mpicc builds mpi-hello)
  debootstrap                         # the demo image (Debian minbase)
  util-linux procps openssh-client    # setpriv, ps; mpirun wants an rsh agent even on one node
  build-essential pkg-config libclang-dev  # Rust crates with C parts; bindgen for the Slurm glue
  charliecloud-runtime hyperfine      # peers and tools for benchmarks/
  hpcc calculix-ccx libopenblas0-serial  # berth-bench suite: Linpack (HPL in hpcc), CalculiX FEA, the BLAS both use (host and bench image)
  python3-numpy                       # berth-bench suite: the Python-imports row (host and bench image)
  docker-registry skopeo umoci apache2-utils  # berth-image tests: local registry, pushes, reference unpack, htpasswd
  libmpich12                          # an MPICH library for the MPI ABI-check tests (library only, no mpirun)
  slurm-wlm slurmctld slurmd munge libslurm-dev iproute2  # the test cluster; spank.h for the plugin
  openssh-server                      # the OpenLava tests: an sshd per test host for mpirun's rsh agent
  busybox-static                      # tests/src/hostile.rs: minimal hostile images (one static binary)
  libseccomp-dev apt-utils            # the fake-root filter (--remap-root); tests/src/aptrepo.rs: apt-ftparchive
  gcc-aarch64-linux-gnu libc6-dev-arm64-cross  # CI's aarch64 check: the C parts of zstd-sys and liblzma-sys
  lintian man-db libcap2-bin          # scripts/package.sh's packages: checked by lintian, man -w, getcap
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Unprivileged FUSE (mount mode) needs /dev/fuse open to users, as Debian's default udev rule has it.
[ -e /dev/fuse ] && chmod 0666 /dev/fuse

# The non-root user tests and the demo run as, with a supplementary group.
user=${BERTH_TEST_USER:-berthtest}
getent group berthgrp >/dev/null || groupadd berthgrp
id "$user" >/dev/null 2>&1 || useradd -m -s /bin/bash -G berthgrp "$user"
id -nG "$user" | grep -qw berthgrp || usermod -aG berthgrp "$user"

if ! command -v cargo >/dev/null 2>&1; then
  echo "install-deps: cargo not found: install a Rust toolchain (rustup) and re-run" >&2
  exit 1
fi
# scripts/package.sh builds the Debian packages with cargo-deb (tests/run installs and checks them).
cargo deb --version >/dev/null 2>&1 || cargo install cargo-deb --locked
# CI checks that berth builds for aarch64 (Grace Hopper nodes); without the target's std it is skipped.
rustup target add aarch64-unknown-linux-gnu >/dev/null 2>&1 || echo "install-deps: no aarch64 target (rustup): skip" >&2
echo "install-deps: ok" >&2
