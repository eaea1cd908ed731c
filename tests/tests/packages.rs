//! The Debian packages `scripts/package.sh deb` made (tests/run makes them first): lintian finds
//! no error in them; installed with apt they give a working `/usr/bin/berth` for the test user,
//! man pages, no setuid bit and no capabilities; purged, they leave no file behind.
//!
//! Installing touches the machine's /usr and /etc. The other tests run target/debug/berth and
//! target/release/libspank_berth.so, never the installed files, and a guard purges the
//! packages whatever happens.

use berth_tests::*;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const PACKAGES: [&str; 3] = ["berth", "berth-slurm", "berth-openlava"];

/// The one `<package>_*.deb` of each package in target/debian.
fn debs() -> Vec<PathBuf> {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("debian");
    PACKAGES
        .iter()
        .map(|name| {
            let prefix = format!("{name}_");
            let found: Vec<PathBuf> = fs::read_dir(&dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    let f = p.file_name().unwrap().to_string_lossy();
                    f.starts_with(&prefix) && f.ends_with(".deb")
                })
                .collect();
            assert!(
                found.len() == 1,
                "want one {prefix}*.deb in {}, found {found:?}: run scripts/package.sh deb (tests/run does)",
                dir.display()
            );
            found.into_iter().next().unwrap()
        })
        .collect()
}

fn root_command(program: &str, args: &[&str]) -> Run {
    let mut cmd = Command::new(program);
    cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
    run(cmd)
}

/// Purges the packages when dropped, so a failed assertion leaves nothing installed.
struct Installed;

impl Installed {
    /// `apt-get remove --purge` of those of the packages dpkg knows (apt refuses a name it has
    /// never seen, e.g. after an install that failed).
    fn purge() -> Run {
        let mut args = vec![
            "remove",
            "--purge",
            "-y",
            "-q",
            "-o",
            "DPkg::Lock::Timeout=300",
        ];
        args.extend(PACKAGES.iter().filter(|name| {
            let status = root_command("dpkg-query", &["-W", "-f=${Status}", name]);
            status.ok() && !status.stdout.ends_with("not-installed")
        }));
        root_command("apt-get", &args)
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Installed::purge();
    }
}

#[test]
fn lintian_finds_no_error_in_the_packages() {
    let debs = debs();
    let mut args = vec!["--fail-on", "error", "--no-tag-display-limit"];
    args.extend(debs.iter().map(|p| p.to_str().unwrap()));
    let r = root_command("lintian", &args);
    // Warnings are allowed; the log shows them.
    eprintln!("lintian:\n{}{}", r.stdout, r.stderr);
    assert!(r.ok(), "lintian found errors:\n{}{}", r.stdout, r.stderr);
    assert!(
        !r.stdout.lines().any(|l| l.starts_with("E: ")),
        "{}",
        r.stdout
    );
}

#[test]
fn installed_packages_work_for_users_and_purge_leaves_nothing() {
    assert!(
        is_root(),
        "this test installs packages: run it as root (tests/run)"
    );
    // apt reads local .deb files as its unprivileged _apt user: a copy in a directory it can read.
    let dir = per_process_dir("berth-test-debs");
    let mut install = vec![
        "install".to_string(),
        "-y".into(),
        "-q".into(),
        "-o".into(),
        "DPkg::Lock::Timeout=300".into(),
    ];
    for deb in debs() {
        let copy = dir.join(deb.file_name().unwrap());
        fs::copy(&deb, &copy).unwrap();
        fs::set_permissions(&copy, fs::Permissions::from_mode(0o644)).unwrap();
        install.push(copy.to_str().unwrap().into());
    }
    let guard = Installed;
    let args: Vec<&str> = install.iter().map(String::as_str).collect();
    root_command("apt-get", &args).expect_ok("apt-get install the packages");

    let mut files: Vec<PathBuf> = Vec::new();
    for name in PACKAGES {
        let r = root_command("dpkg", &["-L", name]).expect_ok("dpkg -L");
        files.extend(r.stdout.lines().filter(|l| *l != "/.").map(PathBuf::from));
    }
    for want in [
        "/usr/bin/berth",
        "/usr/bin/berth-image",
        "/etc/berth/berth.toml",
        "/usr/share/bash-completion/completions/berth",
        "/usr/share/zsh/vendor-completions/_berth",
        "/usr/share/fish/vendor_completions.d/berth.fish",
        "/etc/slurm/plugstack.conf.d/berth.conf",
        "/usr/bin/berth-lava-starter",
        "/usr/bin/berth-lava-esub",
        "/usr/bin/berth-lava-mpirun",
        "/usr/share/doc/berth-openlava/examples/lsb.queues",
    ] {
        assert!(
            files.iter().any(|f| f == Path::new(want)),
            "{want} is not in the packages: {files:?}"
        );
    }
    assert!(
        files.iter().any(|f| f.starts_with("/etc/berth/conf.d/")),
        "no vendor drop-in in /etc/berth/conf.d: {files:?}"
    );
    let plugin = files
        .iter()
        .find(|f| f.file_name().is_some_and(|n| n == "spank_berth.so"))
        .expect("berth-slurm has spank_berth.so");
    assert!(plugin.starts_with("/usr/lib"), "{}", plugin.display());

    // The man pages are where man finds them.
    for page in [
        &["berth"][..],
        &["berth-image"],
        &["5", "berth.toml"],
        &["8", "berth-slurm"],
    ] {
        let mut args = vec!["-w"];
        args.extend(page);
        let r = root_command("man", &args).expect_ok("man -w");
        assert!(
            r.stdout.starts_with("/usr/share/man/"),
            "man -w {page:?}: {}",
            r.stdout
        );
    }

    // No setuid or setgid bit, no capabilities; programs are plain 0755.
    let regular: Vec<&PathBuf> = files
        .iter()
        .filter(|f| fs::symlink_metadata(f).is_ok_and(|m| m.is_file()))
        .collect();
    for f in &regular {
        let mode = fs::metadata(f).unwrap().mode() & 0o7777;
        assert_eq!(mode & 0o7000, 0, "{} has mode {mode:o}", f.display());
        if f.starts_with("/usr/bin") {
            assert_eq!(mode, 0o755, "{} has mode {mode:o}", f.display());
        }
    }
    let mut getcap = vec!["-r"];
    getcap.extend(regular.iter().map(|f| f.to_str().unwrap()));
    let caps = root_command("getcap", &getcap);
    assert!(
        caps.stdout.trim().is_empty(),
        "capabilities set: {}",
        caps.stdout
    );

    // The plugin's plugstack line ships commented out: Slurm loads nothing until the admin says.
    let plugstack = fs::read_to_string("/etc/slurm/plugstack.conf.d/berth.conf").unwrap();
    assert!(
        plugstack
            .lines()
            .all(|l| l.trim().is_empty() || l.starts_with('#')),
        "{plugstack}"
    );
    assert!(
        plugstack.contains("#optional spank_berth.so"),
        "{plugstack}"
    );

    // The test user runs the installed berth, with the shipped policy files.
    let sb = Sandbox::new("packages");
    let user_run = |args: &[&str]| {
        let mut argv = vec!["/usr/bin/berth".to_string()];
        argv.extend(args.iter().map(|a| a.to_string()));
        run(sb.as_user(&argv))
    };
    let v = user_run(&["--version"]).expect_ok("berth --version");
    assert!(v.stdout.starts_with("berth "), "{}", v.stdout);
    let check = user_run(&["policy", "check"]).expect_ok("berth policy check");
    assert!(
        check.stdout.contains("/etc/berth/berth.toml"),
        "{}",
        check.stdout
    );
    let image = demo_image();
    user_run(&["run", image.to_str().unwrap(), "--", "true"]).expect_ok("berth run ... -- true");
    // The image keeper (BERTH_IMAGE_IDLE=2 in the sandbox) ends before the files go.
    assert!(
        eventually(Duration::from_secs(60), || sb.processes().is_empty()),
        "berth processes left: {:?}",
        sb.processes()
    );

    Installed::purge().expect_ok("apt-get remove --purge");
    drop(guard);
    // What is still there must be a directory another package owns (/usr/bin, ...).
    let left: Vec<&PathBuf> = files
        .iter()
        .filter(|f| fs::symlink_metadata(f).is_ok())
        .filter(|f| !f.is_dir() || !root_command("dpkg", &["-S", f.to_str().unwrap()]).ok())
        .collect();
    assert!(left.is_empty(), "left after purge: {left:?}");
    assert!(
        !Path::new("/etc/berth").exists(),
        "/etc/berth is left after purge"
    );
    let _ = fs::remove_dir_all(&dir);
}
