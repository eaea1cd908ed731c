//! The names of the architecture berth was built for, as the host spells them: the Debian
//! multiarch directory (`/usr/lib/<triplet>`) and the tag `ldconfig -p` puts on that
//! architecture's libraries. berth runs images of its own architecture, so the same names
//! hold inside the image. Every function takes the architecture (`std::env::consts::ARCH`
//! spelling) so that each one's values can be tested on any build machine.

use std::path::PathBuf;

/// The architecture berth was built for.
pub const NATIVE: &str = std::env::consts::ARCH;

/// The Debian/Ubuntu multiarch triplet: `/usr/lib/<triplet>` holds the libraries.
pub fn multiarch_triplet(arch: &str) -> String {
    match arch {
        "x86" => "i386-linux-gnu".into(),
        "arm" => "arm-linux-gnueabihf".into(),
        "powerpc64" => "powerpc64le-linux-gnu".into(),
        other => format!("{other}-linux-gnu"),
    }
}

/// The flag `ldconfig -p` shows on this architecture's libraries (`libc.so.6 (libc6,x86-64)
/// => ...`); None where glibc puts none (its 32-bit entries are plain `libc6`).
pub fn ld_cache_tag(arch: &str) -> Option<&'static str> {
    match arch {
        "x86_64" => Some("x86-64"),
        "aarch64" => Some("AArch64"),
        "powerpc64" | "s390x" | "sparc64" => Some("64bit"),
        "riscv64" => Some("double-float"),
        _ => None,
    }
}

/// The path of one `ldconfig -p` entry, when it is a library of `arch`: a 32-bit or x32
/// library of the same name would not load in a 64-bit program.
pub fn ld_cache_entry(line: &str, arch: &str) -> Option<PathBuf> {
    let (name, path) = line.split_once(" => ")?;
    let flags = name.rsplit_once('(')?.1.trim_end().trim_end_matches(')');
    let flags: Vec<&str> = flags.split(',').map(str::trim).collect();
    let ours = match ld_cache_tag(arch) {
        Some(tag) => flags.contains(&tag),
        // No tag: the entries with no architecture flag (`libc6` alone).
        None => flags.len() == 1,
    };
    ours.then(|| PathBuf::from(path.trim()))
}

/// Where images and hosts keep shared libraries of `arch`, relative to the root, the multiarch
/// directories first.
pub fn lib_dirs(arch: &str) -> Vec<String> {
    let triplet = multiarch_triplet(arch);
    vec![
        format!("usr/lib/{triplet}"),
        "usr/lib64".into(),
        "usr/lib".into(),
        "usr/local/lib".into(),
        format!("lib/{triplet}"),
        "lib64".into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn triplets() {
        assert_eq!(multiarch_triplet("x86_64"), "x86_64-linux-gnu");
        assert_eq!(multiarch_triplet("aarch64"), "aarch64-linux-gnu");
        assert_eq!(multiarch_triplet(NATIVE), format!("{NATIVE}-linux-gnu"));
    }

    #[test]
    fn lib_dirs_of_both_architectures() {
        assert_eq!(lib_dirs("x86_64")[0], "usr/lib/x86_64-linux-gnu");
        assert!(lib_dirs("x86_64").contains(&"lib/x86_64-linux-gnu".to_string()));
        assert_eq!(lib_dirs("aarch64")[0], "usr/lib/aarch64-linux-gnu");
        assert!(lib_dirs("aarch64").contains(&"lib/aarch64-linux-gnu".to_string()));
        assert!(!lib_dirs("aarch64").iter().any(|d| d.contains("x86")));
    }

    // Lines as ldconfig -p prints them on Debian 12 (amd64 with i386 and x32 libraries) and
    // on Ubuntu 22.04 arm64 (with armhf libraries).
    const X86_64_CACHE: &str = "\
1234 libs found in cache `/etc/ld.so.cache'
\tlibcuda.so.1 (libc6,x86-64) => /lib/x86_64-linux-gnu/libcuda.so.1
\tlibcuda.so.1 (libc6) => /lib/i386-linux-gnu/libcuda.so.1
\tlibc.so.6 (libc6,x32) => /libx32/libc.so.6
\tlibnvidia-ml.so.1 (libc6,x86-64, OS ABI: Linux 3.2.0) => /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1
";
    const AARCH64_CACHE: &str = "\
987 libs found in cache `/etc/ld.so.cache'
\tlibcuda.so.1 (libc6,AArch64) => /lib/aarch64-linux-gnu/libcuda.so.1
\tlibc.so.6 (libc6,hard-float) => /lib/arm-linux-gnueabihf/libc.so.6
\tld-linux-aarch64.so.1 (libc6,AArch64) => /lib/ld-linux-aarch64.so.1
";

    fn entries(cache: &str, arch: &str) -> Vec<PathBuf> {
        cache
            .lines()
            .filter_map(|l| ld_cache_entry(l, arch))
            .collect()
    }

    #[test]
    fn ld_cache_entries_of_x86_64() {
        assert_eq!(
            entries(X86_64_CACHE, "x86_64"),
            [
                Path::new("/lib/x86_64-linux-gnu/libcuda.so.1"),
                Path::new("/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1")
            ]
        );
        assert_eq!(
            entries(X86_64_CACHE, "x86"),
            [Path::new("/lib/i386-linux-gnu/libcuda.so.1")]
        );
    }

    #[test]
    fn ld_cache_entries_of_aarch64() {
        assert_eq!(ld_cache_tag("aarch64"), Some("AArch64"));
        assert_eq!(
            entries(AARCH64_CACHE, "aarch64"),
            [
                Path::new("/lib/aarch64-linux-gnu/libcuda.so.1"),
                Path::new("/lib/ld-linux-aarch64.so.1")
            ]
        );
        assert!(entries(AARCH64_CACHE, "x86_64").is_empty());
    }
}
