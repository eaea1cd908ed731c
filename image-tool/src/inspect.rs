//! `berth-image inspect` and `verify`: read an image's config with `unsquashfs -cat`.

use berth_image_config::{ImageConfig, CONFIG_PATH};
use std::path::Path;
use std::process::{Command, Stdio};

#[derive(Debug, serde::Serialize)]
pub struct Info {
    pub image: String,
    pub size: u64,
    pub config: Option<ImageConfig>,
}

fn unsquashfs(args: &[&str], image: &Path) -> Result<Vec<u8>, String> {
    let out = Command::new("unsquashfs")
        .args(args)
        .arg(image)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run unsquashfs ({e}); install squashfs-tools"))?;
    if !out.status.success() {
        let last = crate::inspect::last_line(&out.stderr);
        return Err(format!(
            "{} is not a readable squashfs image: {}",
            image.display(),
            last.trim()
        ));
    }
    Ok(out.stdout)
}

pub fn inspect(image: &Path) -> Result<Info, String> {
    let meta =
        std::fs::metadata(image).map_err(|e| format!("cannot open {}: {e}", image.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a squashfs file", image.display()));
    }
    // The superblock first: a clear error for files that are not images at all.
    unsquashfs(&["-s"], image)?;
    let listing = String::from_utf8_lossy(&unsquashfs(&["-lc"], image)?).into_owned();
    let has_config = listing
        .lines()
        .any(|l| l.trim_end() == format!("squashfs-root/{CONFIG_PATH}"));
    let config = if has_config {
        let bytes = cat(image, CONFIG_PATH)?;
        Some(ImageConfig::parse(&String::from_utf8_lossy(&bytes))?)
    } else {
        None
    };
    Ok(Info {
        image: image.display().to_string(),
        size: meta.len(),
        config,
    })
}

fn cat(image: &Path, path: &str) -> Result<Vec<u8>, String> {
    let out = Command::new("unsquashfs")
        .arg("-cat")
        .arg(image)
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run unsquashfs ({e}); install squashfs-tools"))?;
    if !out.status.success() {
        return Err(format!("cannot read {path} in {}", image.display()));
    }
    Ok(out.stdout)
}

/// Human-readable form of `inspect`.
pub fn print(info: &Info) {
    println!(
        "image:       {} ({:.1} MiB)",
        info.image,
        info.size as f64 / 1048576.0
    );
    let Some(c) = &info.config else {
        println!("config:      none ({CONFIG_PATH} missing: not made by berth-image)");
        return;
    };
    for (k, v) in &c.source {
        if k == "layers" {
            continue;
        }
        println!("{:<12} {v}", format!("{k}:"));
    }
    let r = &c.config;
    let show = |v: &Option<Vec<String>>| {
        v.as_ref()
            .map(|v| format!("{v:?}"))
            .unwrap_or_else(|| "-".into())
    };
    println!("Entrypoint:  {}", show(&r.entrypoint));
    println!("Cmd:         {}", show(&r.cmd));
    println!("WorkingDir:  {}", r.working_dir.as_deref().unwrap_or("-"));
    for e in &r.env {
        println!("Env:         {e}");
    }
    for (k, v) in &r.labels {
        println!("Label:       {k}={v}");
    }
    if let Some(layers) = c.source.get("layers") {
        let layers: Vec<&str> = layers.split_whitespace().collect();
        println!("layers:      {}", layers.len());
        for l in layers {
            println!("  {l}");
        }
    }
}

/// A structural check: the superblock, every directory and inode readable, the config valid.
pub fn verify(image: &Path) -> Result<Info, String> {
    let info = inspect(image)?;
    unsquashfs(&["-lls"], image)?;
    if info.config.is_none() {
        return Err(format!(
            "{} has no {CONFIG_PATH}; it was not made by berth-image",
            image.display()
        ));
    }
    Ok(info)
}

/// The last non-empty line a tool wrote to stderr: the one that says what went wrong.
pub(crate) fn last_line(stderr: &[u8]) -> String {
    String::from_utf8_lossy(stderr)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no message")
        .to_string()
}
