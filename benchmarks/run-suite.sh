#!/usr/bin/env bash
# The full native-vs-container report on this machine, in one command (as root, on a quiet machine):
#   sudo benchmarks/run-suite.sh [extra berth-bench suite flags]
# writes benchmarks/report/{report.md,report.json,report.svg} (or $BERTH_BENCH_OUT), 20 repetitions
# (BERTH_BENCH_REPS=N to change it). About 40 minutes on 2 cores
# (benchmarks/README.md lists what runs). Builds what it needs: berth, berth-bench and the
# Slurm plugin (release), and the benchmark image (benchmarks/images/build-bench.sh, cached in
# /var/cache/berth-bench, rebuilt when the script changes); starts a Docker daemon for the
# Docker column if none runs (below) and stops it at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run-suite: run as root (the commands run as the test user berthtest)" >&2; exit 1; }
for tool in hpcc ccx mpirun mpicc mksquashfs squashfuse_ll debootstrap setpriv; do
  command -v "$tool" >/dev/null || { echo "run-suite: $tool is missing: run scripts/install-deps.sh" >&2; exit 1; }
done
cache=${BERTH_BENCH_CACHE:-/var/cache/berth-bench}
mkdir -p "$cache"
stamp=$(sha256sum benchmarks/images/build-bench.sh | cut -c1-16)
if [ ! -f "$cache/bench.sqsh" ] || [ "$(cat "$cache/bench.stamp" 2>/dev/null)" != "$stamp" ]; then
  benchmarks/images/build-bench.sh "$cache/bench.sqsh"
  echo "$stamp" > "$cache/bench.stamp"
fi
chmod 0755 "$cache"
cargo build --release -q -p berth-launcher -p berth-bench -p berth-slurm
out=${BERTH_BENCH_OUT:-benchmarks/report}
mkdir -p "$out"

# The Docker column (optional; BERTH_BENCH_DOCKER=0 leaves it out). Without a daemon of the
# caller's (DOCKER_HOST or the default socket), Debian's docker.io is installed if missing and a
# daemon of our own started: no bridge, no iptables (the containers run with --network none,
# nothing leaves the machine), its data outside /tmp, its own socket; stopped at the end.
docker_data=${BERTH_BENCH_DOCKER_DATA:-/var/lib/berth-bench-docker}
docker_run=/run/berth-bench-docker
dockerd_pid=
stop_dockerd() {
  [ -n "$dockerd_pid" ] || return 0
  kill "$dockerd_pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.1; done
}
if [ "${BERTH_BENCH_DOCKER:-1}" = 0 ]; then
  export DOCKER_HOST=unix:///nonexistent/berth-bench-no-docker.sock
elif ! docker version --format '{{.Server.Version}}' >/dev/null 2>&1; then
  if ! command -v dockerd >/dev/null; then
    echo "run-suite: installing Debian's docker.io for the Docker column" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends docker.io >&2 \
      || echo "run-suite: docker.io did not install: the Docker rows will say NOT RUN" >&2
  fi
  if command -v dockerd >/dev/null; then
    mkdir -p "$docker_data" "$docker_run"
    export DOCKER_HOST=unix://$docker_run/docker.sock
    dockerd --bridge=none --iptables=false --ip6tables=false --ip-masq=false \
      --data-root "$docker_data" --exec-root "$docker_run/exec" --pidfile "$docker_run/dockerd.pid" \
      -H "$DOCKER_HOST" >"$docker_data.log" 2>&1 &
    dockerd_pid=$!
    trap stop_dockerd EXIT
    for _ in $(seq 300); do docker version >/dev/null 2>&1 && break; sleep 0.1; done
    docker version --format 'run-suite: dockerd {{.Server.Version}} on '"$DOCKER_HOST" >&2 \
      || echo "run-suite: dockerd did not start ($docker_data.log): the Docker rows will say NOT RUN" >&2
  fi
fi

target/release/berth-bench suite \
  --berth target/release/berth \
  --image "$cache/bench.sqsh" --rootfs "$cache/bench-rootfs" \
  --plugin target/release/libspank_berth.so \
  --mode mount,extract --out "$out" --reps "${BERTH_BENCH_REPS:-20}" "$@"
