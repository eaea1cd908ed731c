#!/usr/bin/env bash
# The main job on its embedded default, on a fresh Debian 12 machine: `sudo scripts/demo.sh`.
# Installs what is needed, builds berth, makes the demo image (Debian 12 minbase + Open MPI,
# by debootstrap, as squashfs) and runs an MPI job in it as a non-root user:
#     mpirun -np 2 berth run demo.sqsh -- mpi-hello
# Prints what ran where: each rank's host, OS, uid and container namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "demo: run as root (sudo $0): it installs packages and runs the job as a test user" >&2; exit 1; }

scripts/install-deps.sh
cargo build --release --bins -q

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
echo "== job: mpirun -np 2 berth run $cache/demo.sqsh -- mpi-hello"
cd /tmp
setpriv --reuid "$user" --regid "$user" --init-groups -- \
  env -i HOME="$(getent passwd "$user" | cut -d: -f6)" USER="$user" PATH=/usr/bin:/bin \
  mpirun -np 2 "$bindir/berth" run "$cache/demo.sqsh" -- mpi-hello
echo "== the ranks above ran inside the image (its os-release), as $user, in one shared container (same mnt/user namespaces)"
