//! Progress, for people: only when stderr is a terminal (scripts, `--quiet` and `--json` get
//! errors and warnings only). On a terminal the import draws indicatif bars: one per layer
//! being downloaded (bytes, rate) above a total bar, a bar for unpacking the layers and a
//! spinner while mksquashfs writes the image. On a terminal that cannot move the cursor
//! (`TERM=dumb`) it prints one line per step instead.

use indicatif::{HumanBytes, HumanDuration, MultiProgress, ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

enum Mode {
    Off,
    Lines,
    Bars(MultiProgress),
}

pub struct Progress {
    mode: Mode,
}

const TICK: Duration = Duration::from_millis(100);

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .expect("valid progress template")
        .progress_chars("=> ")
        .tick_chars("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏ ")
}

impl Progress {
    pub fn new(quiet: bool) -> Progress {
        let mode = if quiet || !std::io::stderr().is_terminal() {
            Mode::Off
        } else if std::env::var("TERM").is_ok_and(|t| t == "dumb") {
            Mode::Lines
        } else {
            Mode::Bars(MultiProgress::new())
        };
        Progress { mode }
    }

    fn bars(&self) -> Option<&MultiProgress> {
        match &self.mode {
            Mode::Bars(mp) => Some(mp),
            _ => None,
        }
    }

    /// A permanent line (above any bars).
    pub fn line(&self, msg: &str) {
        match &self.mode {
            Mode::Off => {}
            Mode::Lines => eprintln!("berth-image: {msg}"),
            Mode::Bars(mp) => {
                let _ = mp.println(format!("berth-image: {msg}"));
            }
        }
    }

    /// A line only where there are no bars to show the same thing.
    pub fn plain_line(&self, msg: &str) {
        if let Mode::Lines = self.mode {
            eprintln!("berth-image: {msg}");
        }
    }

    /// Downloads of `count` layers, `bytes` in all (those not cached yet); the layer labels
    /// are `label_width` characters wide at most (the bars line up after them).
    pub fn downloads(&self, count: usize, bytes: u64, label_width: usize) -> Downloads<'_> {
        let total = match self.bars() {
            Some(mp) if count > 0 => {
                let pb = mp.add(ProgressBar::new(bytes).with_style(style(&format!(
                    "{{prefix:>{label_width}}} [{{wide_bar}}] {{bytes}}/{{total_bytes}} \
                     {{binary_bytes_per_sec}} eta {{eta}}"
                ))));
                pb.set_prefix(format!(
                    "total ({count} layer{})",
                    if count == 1 { "" } else { "s" }
                ));
                pb.enable_steady_tick(TICK);
                pb
            }
            _ => ProgressBar::hidden(),
        };
        Downloads {
            progress: self,
            total,
            label_width,
            started: Instant::now(),
            count,
            bytes,
        }
    }

    /// Unpacking: a bar over the layers' raw (compressed) bytes.
    pub fn unpack(&self, bytes: u64) -> ProgressBar {
        match self.bars() {
            Some(mp) => {
                let pb = mp.add(ProgressBar::new(bytes).with_style(style(
                    "{spinner} unpacking [{wide_bar}] {bytes}/{total_bytes} {msg}",
                )));
                pb.enable_steady_tick(TICK);
                pb
            }
            None => ProgressBar::hidden(),
        }
    }

    /// A stage of unknown length: a spinner with the time spent so far.
    pub fn spinner(&self, msg: String) -> ProgressBar {
        match self.bars() {
            Some(mp) => {
                let pb = mp.add(
                    ProgressBar::new_spinner().with_style(style("{spinner} {msg} ({elapsed})")),
                );
                pb.set_message(msg);
                pb.enable_steady_tick(TICK);
                pb
            }
            None => ProgressBar::hidden(),
        }
    }
}

/// The download bars: each running download gets a bar above the total one; a finished
/// download becomes a permanent line.
pub struct Downloads<'a> {
    progress: &'a Progress,
    total: ProgressBar,
    label_width: usize,
    started: Instant,
    count: usize,
    bytes: u64,
}

impl Downloads<'_> {
    /// A bar for one layer download (`label` like `layer 2/5 sha256:0123456789ab`); none for
    /// a layer that was already in the cache (not counted in the total either).
    pub fn layer(&self, label: String, size: u64, cached: bool) -> LayerBar {
        let counted = !cached && self.progress.bars().is_some();
        let bar = match self.progress.bars() {
            Some(mp) if counted => {
                let pb = mp.insert_before(
                    &self.total,
                    ProgressBar::new(size).with_style(style(&format!(
                        "{{prefix:>{}}} [{{wide_bar}}] {{bytes}}/{{total_bytes}} \
                         {{binary_bytes_per_sec}} {{msg}}",
                        self.label_width
                    ))),
                );
                pb.set_prefix(label.clone());
                pb
            }
            _ => ProgressBar::hidden(),
        };
        LayerBar {
            total: if !counted {
                ProgressBar::hidden()
            } else {
                self.total.clone()
            },
            bar,
            label,
            size,
        }
    }

    /// All downloads are over: the total bar becomes one summary line (when there was one).
    pub fn finish(self, ok: bool) {
        self.total.finish_and_clear();
        if ok && self.count > 0 && self.progress.bars().is_some() {
            let secs = self.started.elapsed().as_secs_f64().max(0.001);
            self.progress.line(&format!(
                "downloaded {} layer{}, {} in {} ({}/s)",
                self.count,
                if self.count == 1 { "" } else { "s" },
                HumanBytes(self.bytes),
                HumanDuration(self.started.elapsed()),
                HumanBytes((self.bytes as f64 / secs) as u64)
            ));
        }
    }
}

pub struct LayerBar {
    bar: ProgressBar,
    total: ProgressBar,
    label: String,
    size: u64,
}

impl LayerBar {
    /// `have` bytes of the layer are on disk now (a restarted download can go back to 0).
    pub fn at(&self, have: u64) {
        let was = self.bar.position();
        if have >= was {
            self.total.inc(have - was);
        } else {
            self.total.dec(was - have);
        }
        self.bar.set_position(have);
        if have >= self.size && self.size > 0 {
            // All bytes are in; fetch_layer hashes the file before it enters the cache.
            self.bar.set_message("verifying");
        }
    }

    /// The download is over: the bar gives way to a line saying so (nothing on failure: the
    /// error says it).
    pub fn finish(self, progress: &Progress, outcome: Result<bool, ()>) {
        self.bar.finish_and_clear();
        let size = format!("{:.1} MiB", self.size as f64 / (1024.0 * 1024.0));
        match outcome {
            Ok(false) => progress.line(&format!("{} ({size}) downloaded", self.label)),
            Ok(true) => progress.line(&format!("{} ({size}) already cached", self.label)),
            Err(()) => {}
        }
    }
}
