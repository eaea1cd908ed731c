//! `berth-image`: turns OCI/Docker images into squashfs files that `berth run` runs.
//!
//! Every error is one line on stderr, `berth-image: ...`, with exit status 1 (2 for usage
//! errors, from clap); an import that fails or is interrupted leaves no output and no temp files.

mod assemble;
mod cache;
mod cleanup;
mod fetch;
mod import;
mod inspect;
mod merge;
mod oci;
mod progress;
mod registry;
mod sif;
mod source;
mod store;
mod unpack;

#[cfg(test)]
mod fuzz_unpack;

use clap::{CommandFactory, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "berth-image",
    version,
    long_version = berth_launcher::long_version!(),
    about = "Make squashfs images for berth from OCI/Docker images"
)]
struct Cli {
    /// Print results as JSON on stdout (for scripts).
    #[arg(long, global = true)]
    json: bool,
    /// No progress or warnings on stderr; errors only.
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Import an image into a squashfs file.
    ///
    /// SOURCE: docker://[USER@]REGISTRY/REPO[:TAG|@sha256:DIGEST], [USER@][REGISTRY#]IMAGE[:TAG],
    /// oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE, a rootfs directory, or an
    /// Apptainer SIF file (its squashfs partition is copied out).
    Import {
        source: String,
        /// The squashfs file to write (replaced atomically if it exists).
        #[arg(short, long, required_unless_present = "store")]
        output: Option<PathBuf>,
        /// Import a registry image into the image store, addressed by its digest, once (other
        /// importers of the same image wait for this one); with --json, prints its path.
        #[arg(long, conflicts_with = "output")]
        store: bool,
        /// The store (default $BERTH_STORE, else ~/.local/share/berth/store).
        #[arg(long, value_name = "DIR", requires = "store")]
        store_dir: Option<PathBuf>,
        /// A read-only store searched first (default $BERTH_SITE_STORE).
        #[arg(long, value_name = "DIR", requires = "store")]
        site_store: Option<PathBuf>,
        /// With --store: the job whose steps all get the digest its first import resolved.
        #[arg(long, value_name = "ID", requires = "store")]
        job: Option<String>,
        /// Platform to pick from a multi-arch image: OS/ARCH[/VARIANT] (default linux/<host arch>).
        #[arg(long)]
        platform: Option<String>,
        /// squashfs compression: zstd, gzip, xz, lzo, lz4.
        #[arg(long, default_value = "zstd")]
        comp: String,
        /// Compression level (zstd 1-22, default 3; gzip 1-9, default 9).
        #[arg(long)]
        level: Option<u32>,
        /// Allow plain http to a non-loopback registry.
        #[arg(long)]
        insecure: bool,
        /// Layer cache directory (default $BERTH_LAYER_CACHE or ~/.cache/berth/layers).
        #[arg(long)]
        cache: Option<PathBuf>,
        /// Rebuild the output even if it already holds this image (same manifest, layers and
        /// squashfs settings); without it such an import only checks and says so.
        #[arg(long)]
        force: bool,
        /// Refuse an image whose files add up to more than SIZE unpacked (holes of sparse
        /// files included): bytes, or with K, M, G, T (powers of 1024).
        // The default is above the unpacked size of the largest images in use (CUDA and
        // framework images are 10-30 GiB) and far below what a hostile layer could claim (a
        // few MB of compressed zeros expand to terabytes).
        #[arg(long, value_name = "SIZE", default_value = "64G", value_parser = parse_size)]
        max_size: u64,
        /// How the image is put together: stream (layers into tar2sqfs) or unpack (a temp
        /// rootfs, then mksquashfs); for benchmarks and comparisons.
        #[arg(long, value_enum, default_value = "stream", hide = true)]
        assemble: assemble::Method,
    },
    /// Show an image's config, size, source digest and layers.
    Inspect { image: PathBuf },
    /// Check that an image is readable throughout and carries a valid berth config.
    Verify { image: PathBuf },
    /// The image store: list, remove, collect garbage.
    Store {
        #[command(subcommand)]
        action: StoreCmd,
        /// The store (default $BERTH_STORE, else ~/.local/share/berth/store).
        #[arg(long, value_name = "DIR", global = true)]
        store_dir: Option<PathBuf>,
    },
    /// The per-user layer cache.
    Cache {
        #[command(subcommand)]
        action: CacheCmd,
        /// Layer cache directory (default $BERTH_LAYER_CACHE or ~/.cache/berth/layers).
        #[arg(long, value_name = "DIR", global = true)]
        cache: Option<PathBuf>,
    },
    /// Print berth-image's completion script for SHELL on stdout.
    Completions {
        shell: berth_launcher::cli_docs::Shell,
    },
    /// Write berth-image's man pages (berth-image.1 and one per subcommand) into DIR.
    #[command(hide = true)]
    GenerateMan { dir: PathBuf },
}

#[derive(Subcommand)]
enum StoreCmd {
    /// List the store's images with their size and last use.
    List,
    /// Remove images by digest (sha256:HEX or HEX), key or reference.
    Rm { what: Vec<String> },
    /// Remove images unused for --older-than DAYS, old job records and killed imports' leftovers.
    Gc {
        /// Days since an image's last use after which it is removed.
        #[arg(long, value_name = "DAYS", default_value_t = 30)]
        older_than: u64,
    },
}

#[derive(Subcommand)]
enum CacheCmd {
    /// List cached layers.
    List,
    /// Remove cached layers (all, or those unused for --older-than DAYS).
    Prune {
        /// Only layers unused for this many days (0: all).
        #[arg(long, value_name = "DAYS", default_value_t = 0)]
        older_than: u64,
    },
}

/// `--max-size`: bytes, or a number with K, M, G or T (powers of 1024; `GiB`, `g` also).
fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a size (e.g. 64G, 500M)"))?;
    let shift = match unit
        .trim()
        .to_ascii_lowercase()
        .trim_end_matches("ib")
        .trim_end_matches('b')
    {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return Err(format!("'{text}' is not a size (e.g. 64G, 500M)")),
    };
    number
        .checked_mul(1 << shift)
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("'{text}' is not a usable size"))
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("berth-image: {}", berth_launcher::one_line(&e));
        std::process::exit(1);
    }
}

fn json_out(v: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(v).expect("serializable"));
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.cmd {
        Cmd::Import {
            source,
            output,
            store,
            store_dir,
            site_store,
            job,
            platform,
            comp,
            level,
            insecure,
            cache,
            force,
            max_size,
            assemble,
        } => {
            cleanup::install_signal_handlers()?;
            let store = match store {
                false => None,
                true => Some(store::Stores {
                    user: match store_dir {
                        Some(d) => d,
                        None => store::default_dir()?,
                    },
                    site: site_store.or_else(store::default_site),
                }),
            };
            let opts = import::Options {
                source: source::parse_source(&source)?,
                source_text: source,
                output: output.unwrap_or_default(),
                store,
                job,
                platform,
                comp,
                level,
                insecure,
                cache_dir: cache,
                quiet: cli.quiet || cli.json,
                force,
                max_size,
                assemble,
            };
            let summary = import::import(&opts)?;
            if cli.json {
                json_out(&summary);
            } else if !cli.quiet && summary.up_to_date {
                eprintln!(
                    "berth-image: {} is up to date ({}); not rebuilt (--force rebuilds)",
                    summary.output.display(),
                    summary
                        .manifest_digest
                        .as_deref()
                        .unwrap_or("same source, layers and settings")
                );
            } else if !cli.quiet {
                eprintln!(
                    "berth-image: wrote {} ({:.1} MiB{})",
                    summary.output.display(),
                    summary.size as f64 / 1048576.0,
                    summary
                        .manifest_digest
                        .as_deref()
                        .map(|d| format!(", from {d}"))
                        .unwrap_or_default()
                );
            }
        }
        Cmd::Completions { shell } => {
            berth_launcher::cli_docs::print_completions(Cli::command(), shell)
                .map_err(|e| format!("cannot write the completion script: {e}"))?;
        }
        Cmd::GenerateMan { dir } => {
            berth_launcher::cli_docs::write_man_pages(Cli::command(), &dir)
                .map_err(|e| format!("cannot write man pages into {}: {e}", dir.display()))?;
        }
        Cmd::Inspect { image } => {
            let info = inspect::inspect(&image)?;
            if cli.json {
                json_out(&info);
            } else {
                inspect::print(&info);
            }
        }
        Cmd::Verify { image } => {
            let info = inspect::verify(&image)?;
            if cli.json {
                json_out(&info);
            } else if !cli.quiet {
                println!("{}: ok", image.display());
            }
        }
        Cmd::Store {
            action,
            store_dir: dir,
        } => {
            let dir = match dir {
                Some(d) => d,
                None => store::default_dir()?,
            };
            match action {
                StoreCmd::List => {
                    let entries = store::list(&dir)?;
                    if cli.json {
                        json_out(&entries);
                    } else {
                        let day = |t: u64| {
                            let age = std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .map(|d| d.as_secs())
                                .unwrap_or(0)
                                .saturating_sub(t);
                            format!("{}d ago", age / 86400)
                        };
                        for e in &entries {
                            println!(
                                "{} {:>9.1} MiB  used {:>8}  {}",
                                &e.meta.digest[..e.meta.digest.len().min(19)],
                                e.meta.size as f64 / 1048576.0,
                                day(e.last_used),
                                e.meta.reference
                            );
                        }
                    }
                }
                StoreCmd::Rm { what } => {
                    for w in &what {
                        if store::remove(&dir, w)? == 0 {
                            return Err(format!(
                                "no image {w} in the store {}; see berth-image store list",
                                dir.display()
                            ));
                        }
                    }
                }
                StoreCmd::Gc { older_than } => {
                    let (n, bytes) = store::gc(&dir, Duration::from_secs(older_than * 86400))?;
                    if cli.json {
                        json_out(&serde_json::json!({"removed": n, "bytes": bytes}));
                    } else if !cli.quiet {
                        println!("removed {n} images ({:.1} MiB)", bytes as f64 / 1048576.0);
                    }
                }
            }
        }
        Cmd::Cache { action, cache } => {
            let c = cache::Cache::open(match cache {
                Some(d) => d,
                None => cache::default_dir()?,
            })?;
            match action {
                CacheCmd::List => {
                    let blobs = c.list()?;
                    if cli.json {
                        let v: Vec<_> = blobs
                            .iter()
                            .map(|(d, s, _)| {
                                let hex = d.trim_start_matches("sha256:");
                                let decoded = cache::decoded_bytes(&c.dir, hex);
                                serde_json::json!({"digest": d, "size": s, "decoded_size": decoded})
                            })
                            .collect();
                        json_out(&v);
                    } else {
                        for (d, s, _) in &blobs {
                            println!("{d} {s}");
                        }
                    }
                }
                CacheCmd::Prune { older_than } => {
                    let (n, bytes) = c.prune(Duration::from_secs(older_than * 86400))?;
                    if cli.json {
                        json_out(&serde_json::json!({"removed": n, "bytes": bytes}));
                    } else if !cli.quiet {
                        println!("removed {n} layers ({:.1} MiB)", bytes as f64 / 1048576.0);
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod cli_tests {
    use super::*;

    /// Every flag of every subcommand has help text and appears in its man page.
    #[test]
    fn every_flag_is_in_its_man_page() {
        let missing = berth_launcher::cli_docs::undocumented_flags(Cli::command()).unwrap();
        assert!(missing.is_empty(), "undocumented flags: {missing:?}");
    }

    #[test]
    fn version_names_the_commit_and_features() {
        let text = Cli::command().render_long_version();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], concat!("berth-image ", env!("CARGO_PKG_VERSION")));
        assert!(lines[1].starts_with("commit: ") && lines[2].starts_with("features: "));
    }

    #[test]
    fn man_pages_for_berth_image_and_each_subcommand() {
        let wrong = berth_launcher::cli_docs::man_page_mismatches(
            Cli::command(),
            &[
                "berth-image.1",
                "berth-image-import.1",
                "berth-image-store-gc.1",
            ],
            "generate-man",
        )
        .unwrap();
        assert!(wrong.is_empty(), "{wrong:?}");
    }
}
