#!/usr/bin/env bash
# The full native-vs-container report on this machine, in one command (as root, on a quiet machine):
#   sudo benchmarks/run-suite.sh [extra berth-bench suite flags]
# writes benchmarks/report/{report.md,report.json,report.svg} (or $BERTH_BENCH_OUT), 20 repetitions
# (BERTH_BENCH_REPS=N to change it). About 40 minutes on 2 cores
# (benchmarks/README.md lists what runs). Builds what it needs: berth, berth-bench and the
# Slurm plugin (release), and the benchmark image (benchmarks/images/build-bench.sh, cached in
# /var/cache/berth-bench, rebuilt when the script changes).
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
exec target/release/berth-bench suite \
  --berth target/release/berth \
  --image "$cache/bench.sqsh" --rootfs "$cache/bench-rootfs" \
  --plugin target/release/libspank_berth.so \
  --mode mount,extract --out "$out" --reps "${BERTH_BENCH_REPS:-20}" "$@"
