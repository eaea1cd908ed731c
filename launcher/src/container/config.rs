//! The image's config (`/.berth/image.json`), read safely from a root.

use crate::error::{Context, Error, Result};
use crate::image_config::{ImageConfig, CONFIG_PATH};
use crate::sys;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Read the image config from the container root (the current root after [`super::build`]), or from a
/// directory image (`--dry-run`). Images without one (plain directories, squashfs made by other
/// tools) get the empty config. The file is resolved inside `root`, opened without blocking (a
/// FIFO must hang neither the run nor a keeper) and must be a regular file of at most 1 MiB.
pub fn read_config(root: &Path) -> Result<ImageConfig> {
    use crate::image::{kind_name, read_at_most};
    use crate::image_config::{not_regular, too_large, CONFIG_MAX_BYTES};
    let shown = format!("`/{CONFIG_PATH}` in the image");
    let dir = File::options()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(root)
        .ctx(|| format!("cannot open {}", root.display()))?;
    let rel = Path::new(CONFIG_PATH);
    let nonblocking = libc::O_RDONLY | libc::O_NONBLOCK;
    let file = match sys::open_in_root(dir.as_raw_fd(), rel, nonblocking, 0) {
        Ok(fd) => File::from(fd),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
            return Ok(ImageConfig::default())
        }
        // A socket cannot be opened at all: say what is there rather than ENXIO.
        Err(e) => {
            let meta = sys::open_in_root(dir.as_raw_fd(), rel, libc::O_PATH, 0)
                .and_then(|fd| File::from(fd).metadata());
            return Err(match meta {
                Ok(m) if !m.is_file() => Error::Image(not_regular(kind_name(m.file_type()))),
                _ => Error::Image(format!("cannot read {shown}: {e}")),
            });
        }
    };
    let meta = file.metadata().ctx(|| format!("cannot read {shown}"))?;
    if !meta.is_file() {
        return Err(Error::Image(not_regular(kind_name(meta.file_type()))));
    }
    if meta.len() > CONFIG_MAX_BYTES {
        return Err(Error::Image(too_large()));
    }
    let bytes = read_at_most(file, CONFIG_MAX_BYTES)
        .ctx(|| format!("cannot read {shown}"))?
        .ok_or_else(|| Error::Image(too_large()))?;
    ImageConfig::parse_bytes(&bytes).map_err(Error::Image)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn root_with(name: &str, make: impl FnOnce(&Path)) -> PathBuf {
        let root = std::env::temp_dir().join(format!("berth-config-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join(".berth")).unwrap();
        make(&root.join(CONFIG_PATH));
        root
    }

    fn config_error(root: &Path) -> String {
        let e = read_config(root).unwrap_err().to_string();
        std::fs::remove_dir_all(root).unwrap();
        e
    }

    #[test]
    fn reads_a_regular_config_and_defaults_when_missing() {
        let root = root_with("ok", |p| {
            std::fs::write(p, r#"{"config":{"Env":["A=b"]}}"#).unwrap()
        });
        assert_eq!(read_config(&root).unwrap().config.env, vec!["A=b"]);
        std::fs::remove_file(root.join(CONFIG_PATH)).unwrap();
        assert_eq!(read_config(&root).unwrap(), ImageConfig::default());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn refuses_fifos_sockets_directories_and_huge_files_without_blocking() {
        let fifo = root_with("fifo", |p| {
            nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap()
        });
        assert!(config_error(&fifo).contains("`/.berth/image.json` in the image is a FIFO"));
        let sock = root_with("sock", |p| {
            std::mem::forget(std::os::unix::net::UnixListener::bind(p).unwrap())
        });
        assert!(config_error(&sock).contains("is a socket"));
        let dir = root_with("dir", |p| std::fs::create_dir(p).unwrap());
        assert!(config_error(&dir).contains("is a directory"));
        let huge = root_with("huge", |p| {
            File::create(p).unwrap().set_len(2 << 20).unwrap()
        });
        assert!(config_error(&huge).contains("larger than 1 MiB"));
        // An absolute link is resolved inside the root: here it leads nowhere.
        let link = root_with("link", |p| {
            std::os::unix::fs::symlink("/etc/hostname", p).unwrap()
        });
        assert_eq!(read_config(&link).unwrap(), ImageConfig::default());
        std::fs::remove_dir_all(&link).unwrap();
    }
}
