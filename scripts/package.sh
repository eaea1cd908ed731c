#!/usr/bin/env bash
# Build berth's packages: `scripts/package.sh [deb|rpm|all]` (default all), from the repository.
#   deb: target/debian/{berth,berth-slurm,berth-openlava}_<version>-1_<arch>.deb  (cargo deb)
#   rpm: target/generate-rpm/{berth,berth-slurm,berth-openlava}-<version>-1.<arch>.rpm  (cargo generate-rpm)
# The packages' contents are declared in [package.metadata.deb] and [package.metadata.generate-rpm]
# of launcher/, slurm-glue/ and openlava-glue/Cargo.toml. This script builds the binaries once
# (release), then stages what is generated from them (man pages, shell completions) and the
# examples under target/release/berth-package/, which those declarations list.
# Tools: cargo-deb and cargo-generate-rpm (`cargo install cargo-deb cargo-generate-rpm --locked`).
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
case "$what" in deb|rpm|all) ;; *) echo "usage: scripts/package.sh [deb|rpm|all]" >&2; exit 2 ;; esac
[ -d "$HOME/.cargo/bin" ] && export PATH="$HOME/.cargo/bin:$PATH"
fail() { echo "package: $*" >&2; exit 1; }

need_tool() {
  cargo "$1" --version >/dev/null 2>&1 \
    || fail "cargo $1 is missing: cargo install cargo-$1 --locked (scripts/install-deps.sh installs cargo-deb)"
}
case "$what" in deb|all) need_tool deb ;; esac
case "$what" in rpm|all) need_tool generate-rpm ;; esac

cargo build --release -q -p berth-launcher -p berth-image -p berth-slurm -p berth-openlava
target=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
release=$target/release
stage=$release/berth-package
rm -rf "$stage"
mkdir -p "$stage"/{man1,man5,man8,completions,openlava}

# Man pages and completions come from the clap definitions, through the binaries themselves.
for bin in berth berth-image; do
  for shell in bash zsh fish; do
    "$release/$bin" completions "$shell" >"$stage/completions/$bin.$shell" 2>/dev/null \
      || fail "'$bin completions $shell' failed: this build has no completion generator yet"
  done
  "$release/$bin" generate-man "$stage/man1" >/dev/null 2>&1 \
    || fail "'$bin generate-man DIR' failed: this build has no man page generator yet"
done
[ -n "$(ls "$stage/man1")" ] || fail "generate-man wrote no man page into $stage/man1"
for page in docs/man/berth.toml.5:man5 docs/man/berth-slurm.8:man8; do
  src=${page%:*}
  [ -f "$src" ] || fail "$src is missing"
  cp "$src" "$stage/${page#*:}/"
done
# Debian policy: man pages compressed, reproducibly (no name, no time stamp).
find "$stage" -name '*.[158]' -exec gzip -9n {} +

# OpenLava examples with the packaged paths (the repository's examples say /usr/local/bin).
for f in lsb.queues esub openlava.toml; do
  sed 's|/usr/local/bin/|/usr/bin/|g; s|(examples/openlava.toml)|(/usr/share/doc/berth-openlava/examples/openlava.toml)|' \
    "openlava-glue/examples/$f" >"$stage/openlava/$f"
done

# The Debian changelog every binary package carries: one entry, this version, this commit (its
# date, so that two builds of one commit are the same).
version=$(cargo metadata --format-version 1 --no-deps \
  | sed -n 's/.*"name":"berth-launcher","version":"\([^"]*\)".*/\1/p')
[ -n "$version" ] || fail "cannot read berth-launcher's version from cargo metadata"
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
when=$(git log -1 --format=%aD 2>/dev/null || date -R)
printf '%s\n' "berth ($version-1) unstable; urgency=medium" "" \
  "  * Built from commit $commit." "" \
  " -- berth developers <berth@example.org>  $when" >"$stage/changelog.Debian"
gzip -9n "$stage/changelog.Debian"

if [ "$what" != rpm ]; then
  mkdir -p "$target/debian"
  rm -f "$target"/debian/{berth,berth-slurm,berth-openlava}_*.deb
  cargo deb --no-build -q -p berth-launcher >/dev/null
  # multiarch: the plugin goes to Slurm's PluginDir, /usr/lib/<triplet>/slurm-wlm.
  cargo deb --no-build -q -p berth-slurm --multiarch=same >/dev/null
  cargo deb --no-build -q -p berth-openlava >/dev/null
  ls -l "$target"/debian/{berth,berth-slurm,berth-openlava}_*.deb
fi
if [ "$what" != deb ]; then
  mkdir -p "$target/generate-rpm"
  rm -f "$target"/generate-rpm/{berth,berth-slurm,berth-openlava}-[0-9]*.rpm
  for crate in launcher slurm-glue openlava-glue; do
    cargo generate-rpm -p "$crate"
  done
  ls -l "$target"/generate-rpm/{berth,berth-slurm,berth-openlava}-[0-9]*.rpm
fi
