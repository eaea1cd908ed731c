#!/usr/bin/env bash
# The main job on its embedded default, on a fresh Debian 12 machine: `scripts/demo.sh` as root.
# Installs what is needed, builds berth, makes the demo image (Debian 12 minbase + Open MPI,
# by debootstrap, as squashfs), starts a local 3-node Slurm cluster with berth's SPANK plugin
# (tests/slurm/cluster.sh: munge, slurmctld, three slurmd in network namespaces) and runs, as
# a non-root user:
#     srun -N2 -n4 --mpi=pmix --container=demo.sqsh mpi-hello
#     mpirun -np 2 berth run demo.sqsh -- mpi-hello          (without a scheduler)
# Prints what ran where: each rank's node, the image's OS, uid and container namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
[ "$(id -u)" = 0 ] || { echo "demo: run as root: it installs packages and runs the job as a test user" >&2; exit 1; }

scripts/install-deps.sh
cargo build --release -q

cache=${BERTH_IMAGE_CACHE:-/var/cache/berth-test}
mkdir -p "$cache" && chmod 0755 "$cache"
stamp=$(cat tests/images/* | sha256sum | cut -c1-16)
if [ ! -f "$cache/demo.sqsh" ] || [ "$(cat "$cache/demo.stamp" 2>/dev/null)" != "$stamp" ]; then
  tests/images/build-demo.sh "$cache/demo.sqsh"
  echo "$stamp" > "$cache/demo.stamp"
fi
chmod 0644 "$cache/demo.sqsh"

# The user's copy of berth: a plain binary, no setuid or capabilities.
bindir=/usr/local/lib/berth-demo
install -D -m 0755 target/release/berth "$bindir/berth"
user=${BERTH_TEST_USER:-berthtest}

echo "== host: $(. /etc/os-release; echo "$PRETTY_NAME"), kernel $(uname -r), running as $user (uid $(id -u "$user"))"
echo "== berth: $("$bindir/berth" --version), file capabilities: $(getcap "$bindir/berth" 2>/dev/null || true)none, mode $(stat -c %A "$bindir/berth")"
install -m 0755 target/release/libspank_berth.so "$bindir/spank_berth.so"
as_user() {
  setpriv --reuid "$user" --regid "$user" --init-groups -- \
    env -i HOME="$(getent passwd "$user" | cut -d: -f6)" USER="$user" PATH=/usr/bin:/bin "$@"
}
cluster=/tmp/berth-demo-cluster
trap '"$repo"/tests/slurm/cluster.sh stop "$cluster" >/dev/null 2>&1 || true' EXIT
"$repo"/tests/slurm/cluster.sh start "$cluster" "$bindir/spank_berth.so" >/dev/null
cd /tmp
echo "== slurm: a local cluster of 3 nodes (n1 n2 n3, each in its own network namespace), berth's SPANK plugin loaded"
echo "== job: srun -N2 -n4 --mpi=pmix --container=$cache/demo.sqsh mpi-hello"
as_user env SLURM_CONF="$cluster/slurm.conf" srun -N2 -n4 --ntasks-per-node=2 --mpi=pmix --container="$cache/demo.sqsh" mpi-hello | sort
echo "== the ranks ran inside the image (its os-release), as $user; ranks on one node share one container (same mnt/user namespaces)"
echo
echo "== without a scheduler: mpirun -np 2 berth run $cache/demo.sqsh -- mpi-hello"
as_user mpirun -np 2 "$bindir/berth" run "$cache/demo.sqsh" -- mpi-hello
