#!/usr/bin/env bash
# The main job on its embedded default, on a fresh Debian 12 machine: `scripts/demo.sh` as root.
# Installs what is needed, builds berth's Debian packages and installs them with apt
# (scripts/package.sh: /usr/bin/berth and the packaged plugin are what runs), makes the demo
# image (Debian 12 minbase + Open MPI, by debootstrap, as squashfs), starts a local 3-node
# Slurm cluster with berth's SPANK plugin (tests/slurm/cluster.sh: munge, slurmctld, three
# slurmd in network namespaces) and runs, as a non-root user:
#     srun -N2 -n4 --mpi=pmix --container=demo.sqsh mpi-hello
#     mpirun -np 2 berth run demo.sqsh -- mpi-hello          (without a scheduler)
# Prints what ran where: each rank's node, the image's OS, uid and container namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
[ "$(id -u)" = 0 ] || { echo "demo: run as root: it installs packages and runs the job as a test user" >&2; exit 1; }

scripts/install-deps.sh
# berth as sites install it: the Debian packages (scripts/package.sh builds berth and makes them).
scripts/package.sh deb >/dev/null

cache=${BERTH_IMAGE_CACHE:-/var/cache/berth-test}
mkdir -p "$cache" && chmod 0755 "$cache"
stamp=$(cat tests/images/* | sha256sum | cut -c1-16)
if [ ! -f "$cache/demo.sqsh" ] || [ "$(cat "$cache/demo.stamp" 2>/dev/null)" != "$stamp" ]; then
  tests/images/build-demo.sh "$cache/demo.sqsh"
  echo "$stamp" > "$cache/demo.stamp"
fi
chmod 0644 "$cache/demo.sqsh"

# Installed with apt from a copy its unprivileged _apt user can read: plain 0755 files, no
# setuid bit, no capabilities.
debs=$(mktemp -d /tmp/berth-demo-debs.XXXXXX)
cp target/debian/berth_*.deb target/debian/berth-slurm_*.deb "$debs/"
chmod 0755 "$debs" && chmod 0644 "$debs"/*.deb
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 "$debs"/*.deb >/dev/null
rm -rf "$debs"
berth=/usr/bin/berth
plugin=$(dpkg -L berth-slurm | grep '/spank_berth\.so$')
user=${BERTH_TEST_USER:-berthtest}

echo "== host: $(. /etc/os-release; echo "$PRETTY_NAME"), kernel $(uname -r), running as $user (uid $(id -u "$user"))"
echo "== packages: $(dpkg-query -W -f='${Package} ${Version}, ' berth berth-slurm)installed by apt from target/debian"
echo "== berth: $("$berth" --version | paste -sd" "), file capabilities: $(getcap "$berth" 2>/dev/null || true)none, mode $(stat -c %A "$berth")"
as_user() {
  setpriv --reuid "$user" --regid "$user" --init-groups -- \
    env -i HOME="$(getent passwd "$user" | cut -d: -f6)" USER="$user" PATH=/usr/bin:/bin "$@"
}
cluster=/tmp/berth-demo-cluster
trap '"$repo"/tests/slurm/cluster.sh stop "$cluster" >/dev/null 2>&1 || true' EXIT
"$repo"/tests/slurm/cluster.sh start "$cluster" "$plugin" >/dev/null
cd /tmp
echo "== slurm: a local cluster of 3 nodes (n1 n2 n3, each in its own network namespace), berth's SPANK plugin loaded"
echo "== job: srun -N2 -n4 --mpi=pmix --container=$cache/demo.sqsh mpi-hello"
as_user env SLURM_CONF="$cluster/slurm.conf" srun -N2 -n4 --ntasks-per-node=2 --mpi=pmix --container="$cache/demo.sqsh" mpi-hello | sort
echo "== the ranks ran inside the image (its os-release), as $user; ranks on one node share one container (same mnt/user namespaces)"
echo
echo "== without a scheduler: mpirun -np 2 berth run $cache/demo.sqsh -- mpi-hello"
as_user mpirun -np 2 "$berth" run "$cache/demo.sqsh" -- mpi-hello
