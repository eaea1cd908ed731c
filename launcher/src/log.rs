//! Diagnostics through `tracing`: `berth -v` (info), `-vv` (debug), or `BERTH_LOG` (an
//! EnvFilter directive such as `debug` or `berth_launcher::join=debug`) to stderr; and the
//! join keeper's own log file.
//!
//! Without either nothing is installed: an event is then one relaxed load and a branch, so the
//! per-rank path costs nothing. berth's one-line errors do not go through here.

use std::fs::File;
use std::io::{Seek, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use tracing_subscriber::EnvFilter;

/// The environment variable holding an EnvFilter directive string.
pub const ENV: &str = "BERTH_LOG";

/// A keeper's log is truncated (with a note) when it would grow past this.
pub const KEEPER_LOG_MAX: u64 = 1 << 20;

/// The verbosity asked on the command line, for the keeper (which logs to its file at the
/// more verbose of info and this).
static VERBOSITY: AtomicU8 = AtomicU8::new(0);

fn level(verbosity: u8) -> &'static str {
    match verbosity {
        0 => "warn",
        1 => "info",
        _ => "debug",
    }
}

/// Install the stderr logger if `-v` or `BERTH_LOG` asks for one; else install nothing.
pub fn init(verbosity: u8) {
    VERBOSITY.store(verbosity, Ordering::Relaxed);
    let directive = std::env::var(ENV).ok().filter(|d| !d.trim().is_empty());
    if verbosity == 0 && directive.is_none() {
        return;
    }
    let filter = match directive {
        Some(d) => EnvFilter::builder().parse_lossy(d),
        None => EnvFilter::new(level(verbosity)),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .without_time()
        .try_init();
}

/// Log to `path` (appended, capped at `KEEPER_LOG_MAX`) for as long as the guard lives, in
/// this thread: the keeper's events, whatever the rank that forked it installed. Info by
/// default, more with `-vv`, or as `BERTH_LOG` says.
pub fn to_file(path: &Path) -> std::io::Result<tracing::subscriber::DefaultGuard> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = File::options()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(path)?;
    let written = file.metadata()?.len();
    let verbosity = VERBOSITY.load(Ordering::Relaxed).max(1);
    let filter = match std::env::var(ENV).ok().filter(|d| !d.trim().is_empty()) {
        Some(d) => EnvFilter::builder().parse_lossy(d),
        None => EnvFilter::new(level(verbosity)),
    };
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Mutex::new(Capped { file, written }))
        .with_ansi(false)
        .with_target(false)
        .with_timer(tracing_subscriber::fmt::time::SystemTime)
        .finish();
    Ok(tracing::subscriber::set_default(subscriber))
}

/// Send events (info and debug) to `sink`, a host's own log function: the Slurm plugin passes
/// Slurm's, so the launcher's steps show in slurmd's log at its verbose/debug levels. A no-op
/// if a logger is installed already.
pub fn to_sink(sink: fn(tracing::Level, &str)) {
    use tracing_subscriber::layer::SubscriberExt;
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::filter::LevelFilter::DEBUG)
        .with(Sink(sink));
    let _ = tracing::subscriber::set_global_default(subscriber);
}

/// A layer that hands each event's message (and its other fields, `name=value`) to a function.
struct Sink(fn(tracing::Level, &str));

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Sink {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut text = Text(String::new());
        event.record(&mut text);
        (self.0)(*event.metadata().level(), &text.0);
    }
}

struct Text(String);

impl tracing::field::Visit for Text {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        let _ = match field.name() {
            "message" => write!(self.0, "{value:?}"),
            name => write!(self.0, "{name}={value:?}"),
        };
    }
}

/// A log file that starts over when it would exceed the cap: a long-lived keeper keeps its
/// most recent events, which are the ones that explain a failure.
struct Capped {
    file: File,
    written: u64,
}

impl Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.written + buf.len() as u64 > KEEPER_LOG_MAX {
            self.file.set_len(0)?;
            self.file.rewind()?;
            let note = b"(log truncated: it reached its size limit)\n";
            self.file.write_all(note)?;
            self.written = note.len() as u64;
        }
        self.file.write_all(buf)?;
        self.written += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static SEEN: Mutex<Vec<(tracing::Level, String)>> = Mutex::new(Vec::new());

    fn collect(level: tracing::Level, msg: &str) {
        SEEN.lock().unwrap().push((level, msg.to_string()));
    }

    #[test]
    fn a_sink_gets_each_event_as_one_line() {
        use tracing_subscriber::layer::SubscriberExt;
        let subscriber = tracing_subscriber::registry()
            .with(tracing_subscriber::filter::LevelFilter::DEBUG)
            .with(Sink(collect));
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!("step {} [{}]", "/proc", "default");
            tracing::info!(rank = 7, "joined");
            tracing::trace!("not this");
        });
        let seen = SEEN.lock().unwrap();
        assert_eq!(
            *seen,
            vec![
                (tracing::Level::DEBUG, "step /proc [default]".to_string()),
                (tracing::Level::INFO, "joined rank=7".to_string()),
            ]
        );
    }

    #[test]
    fn a_capped_log_starts_over_and_stays_under_the_cap() {
        let dir = std::env::temp_dir().join(format!("berth-log-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("k.log");
        let file = File::options()
            .append(true)
            .create(true)
            .open(&path)
            .unwrap();
        let mut log = Capped { file, written: 0 };
        let line = [b'x'; 1000];
        for _ in 0..(KEEPER_LOG_MAX / 1000 + 10) {
            log.write_all(&line).unwrap();
        }
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(size <= KEEPER_LOG_MAX, "{size}");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("(log truncated"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
