//! Untidy hosts: mounts that other users and programs leave under /tmp, /dev/shm, the home, the
//! working directory and mount sources never stop berth, and the container shows them as the
//! host does. Site mounts marked `rslave` receive mounts made on the host after start.
//!
//! The host mounts are made by root (the tests run as root) or by the test user itself
//! (squashfuse through the setuid fusermount3, as any user can), and removed at the end.

use berth_tests::*;
use std::fs;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Mounts made for a test, lazily unmounted (last first) when it ends, whatever happened.
struct HostMounts(Vec<PathBuf>);

impl HostMounts {
    fn sh(&mut self, script: &str, point: &Path) {
        let st = Command::new("sh").args(["-ec", script]).status().unwrap();
        assert!(st.success(), "host setup failed: {script}");
        self.0.push(point.to_path_buf());
    }

    /// A tmpfs at `dir` (made if missing) holding `marker` with the text `marker`.
    fn tmpfs(&mut self, dir: &Path, marker: &str) {
        fs::create_dir_all(dir).unwrap();
        self.sh(
            &format!(
                "mount -t tmpfs -o mode=0755 topo {d}; echo {marker} > {d}/{marker}; chmod 0644 {d}/{marker}",
                d = dir.display()
            ),
            dir,
        );
    }
}

impl Drop for HostMounts {
    fn drop(&mut self) {
        for p in self.0.iter().rev() {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(p)
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

fn owned_dir(p: &Path) {
    fs::create_dir_all(p).unwrap();
    let u = user();
    chown(p, Some(u.uid), Some(u.gid)).unwrap();
    fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
}

/// One line from berth, exit 125, nothing left running.
fn one_line_error(sb: &Sandbox, r: &Run, needles: &[&str]) {
    assert_eq!(r.code, Some(125), "stdout {} stderr {}", r.stdout, r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "one line: {}", r.stderr);
    assert!(r.stderr.starts_with("berth: "), "{}", r.stderr);
    for n in needles {
        assert!(r.stderr.contains(n), "{n:?} not in {}", r.stderr);
    }
    assert!(
        eventually(Duration::from_secs(10), || sb.processes().is_empty()),
        "left running: {:?}",
        sb.processes()
    );
}

#[test]
fn submounts_under_tmp_shm_home_and_cwd_are_shown_as_on_the_host() {
    assert!(is_root(), "needs root to make the host's mounts");
    let sb = Sandbox::new("topo-default");
    let u = user();
    let tag = format!("topo-{}", std::process::id());
    let tmp = PathBuf::from(format!("/tmp/{tag}"));
    let _ = fs::remove_dir_all(&tmp);
    owned_dir(&tmp);
    let shm = PathBuf::from(format!("/dev/shm/{tag}"));
    let home = u.home.join(&tag);
    owned_dir(&home);
    let mut mounts = HostMounts(Vec::new());
    // The test user's own FUSE mount under /tmp (any user can make one: fusermount3 is setuid).
    let fuse = tmp.join("fuse");
    owned_dir(&fuse);
    let r = run(sb.as_user(&[
        "squashfuse".into(),
        demo_image().display().to_string(),
        fuse.display().to_string(),
    ]));
    assert!(r.ok(), "squashfuse as the test user: {}", r.stderr);
    mounts.0.push(fuse.clone());
    // Root's FUSE mount (another user's: the test user gets EACCES, on the host as inside).
    let rootfuse = tmp.join("rootfuse");
    fs::create_dir_all(&rootfuse).unwrap();
    mounts.sh(
        &format!(
            "squashfuse {} {}",
            demo_image().display(),
            rootfuse.display()
        ),
        &rootfuse,
    );
    // A bind of a directory on itself, and tmpfs mounts with each propagation type.
    let selfbind = tmp.join("selfbind");
    owned_dir(&selfbind);
    fs::write(selfbind.join("marker-self"), "marker-self\n").unwrap();
    mounts.sh(
        &format!("mount --bind {d} {d}", d = selfbind.display()),
        &selfbind,
    );
    mounts.tmpfs(&tmp.join("shared"), "marker-shared");
    mounts.sh(
        &format!("mount --make-shared {}", tmp.join("shared").display()),
        &tmp.join("shared"),
    );
    let slave = tmp.join("slave");
    fs::create_dir_all(&slave).unwrap();
    mounts.sh(
        &format!(
            "mount --bind {} {s}; mount --make-slave {s}",
            tmp.join("shared").display(),
            s = slave.display()
        ),
        &slave,
    );
    mounts.tmpfs(&tmp.join("private"), "marker-private");
    mounts.sh(
        &format!("mount --make-private {}", tmp.join("private").display()),
        &tmp.join("private"),
    );
    mounts.tmpfs(&shm, "marker-shm");
    mounts.tmpfs(&home.join("sub"), "marker-home");
    mounts.tmpfs(&sb.work.join("sub"), "marker-cwd");

    let script = format!(
        "cd {work}; for f in {tmp}/shared/marker-shared {tmp}/slave/marker-shared {tmp}/private/marker-private \
         {tmp}/selfbind/marker-self {shm}/marker-shm {home}/sub/marker-home sub/marker-cwd; do cat $f; done; \
         head -c 4 {tmp}/fuse/etc/debian_version; echo; ls {tmp}/rootfuse 2>&1 | sed 's/^.*Permission denied.*$/denied/'",
        work = sb.work.display(),
        tmp = tmp.display(),
        shm = shm.display(),
        home = home.display(),
    );
    let host = run(sb.as_user(&["sh".into(), "-c".into(), script.clone()]));
    assert!(
        host.stdout.contains("marker-cwd"),
        "host view: {}",
        host.stdout
    );
    assert!(host.stdout.contains("denied"), "host view: {}", host.stdout);
    let image = demo_image();
    for mode in ["mount", "extract"] {
        let r = run(sb.berth_demo(&["--mode", mode], &["sh", "-c", &script])).expect_ok(mode);
        assert_eq!(
            r.stdout, host.stdout,
            "{mode}: the container shows what the host shows"
        );
    }
    // Under --join too (a keeper builds the container).
    let r = run(sb.berth(&[
        "run",
        "--join",
        &tag,
        image.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        &script,
    ]))
    .expect_ok("join");
    assert_eq!(r.stdout, host.stdout);
    drop(mounts);
    let _ = fs::remove_dir_all(&tmp);
    let _ = fs::remove_dir_all(&home);
}

#[test]
fn mount_sources_with_submounts_or_a_mount_on_top_work_and_a_plain_bind_says_rbind() {
    assert!(is_root(), "needs root to make the host's mounts");
    let sb = Sandbox::new("topo-sources");
    let mut mounts = HostMounts(Vec::new());
    let site = sb.root.join("site");
    owned_dir(&site);
    mounts.tmpfs(&site.join("sub"), "marker-site");
    let src = sb.root.join("src");
    owned_dir(&src);
    mounts.tmpfs(&src.join("sub"), "marker-user");
    // A mount on top of the source itself.
    let stacked = sb.root.join("stacked");
    owned_dir(&stacked);
    mounts.tmpfs(&stacked, "marker-stacked");
    let policy = policy_file(
        &sb,
        &format!(
            "[[mount]]\nsource = \"{}\"\ntarget = \"/site\"\noptions = [\"ro\"]\n",
            site.display()
        ),
    );
    let image = demo_image();
    let user_mount = format!("{}:/data", src.display());
    let stacked_mount = format!("{}:/stacked:bind", stacked.display());
    for mode in ["mount", "extract"] {
        let mut cmd = sb.berth(&[
            "run",
            "--mode",
            mode,
            "-m",
            &user_mount,
            "-m",
            &stacked_mount,
            image.to_str().unwrap(),
            "--",
            "cat",
            "/site/sub/marker-site",
            "/data/sub/marker-user",
            "/stacked/marker-stacked",
        ]);
        cmd.env("BERTH_CONFIG", &policy);
        let r = run(cmd).expect_ok(mode);
        assert_eq!(r.stdout, "marker-site\nmarker-user\nmarker-stacked\n");
    }
    // A non-recursive bind of a source with a submount: one line naming it, suggesting rbind.
    let plain = format!("{}:/data:bind", src.display());
    let mut cmd = sb.berth(&["run", "-m", &plain, image.to_str().unwrap(), "--", "true"]);
    cmd.env("BERTH_CONFIG", &policy);
    let r = run(cmd);
    let sub = src.join("sub").display().to_string();
    one_line_error(&sb, &r, &[&sub, "rbind", "--mount"]);
}

/// A container running `wait-for` polls for `file` (bounded) and prints what it saw.
fn watch_script(file: &str, started: &Path) -> String {
    format!(
        "touch {}; i=0; while [ $i -lt 100 ]; do if [ -e {file} ]; then cat {file}; exit 0; fi; \
         sleep 0.1; i=$((i+1)); done; echo not-seen",
        started.display()
    )
}

#[test]
fn an_rslave_site_mount_shows_mounts_made_on_the_host_after_start() {
    assert!(is_root(), "needs root to make the host's mounts");
    let sb = Sandbox::new("topo-rslave");
    let mut mounts = HostMounts(Vec::new());
    // A shared mount on the host, as a Lustre or autofs tree under systemd's shared / is.
    let project = sb.root.join("project");
    owned_dir(&project);
    fs::create_dir_all(project.join("late")).unwrap();
    mounts.sh(
        &format!(
            "mount --bind {p} {p}; mount --make-shared {p}",
            p = project.display()
        ),
        &project,
    );
    let image = demo_image();
    // A site mount with and without rslave, then a user's --mount with rslave.
    let user_mount = format!("{}:/project:rslave", project.display());
    for (options, user, expect) in [
        ("[\"rslave\"]", false, "late-mount\n"),
        ("[]", false, "not-seen\n"),
        ("", true, "late-mount\n"),
    ] {
        let text = if user {
            String::new()
        } else {
            format!(
                "[[mount]]\nsource = \"{}\"\ntarget = \"/project\"\noptions = {options}\n",
                project.display()
            )
        };
        let policy = policy_file(&sb, &text);
        let started = sb.work.join("started");
        let _ = fs::remove_file(&started);
        let script = watch_script("/project/late/marker", &started);
        let mut args = vec!["run"];
        if user {
            args.extend(["-m", user_mount.as_str()]);
        }
        args.extend([image.to_str().unwrap(), "--", "sh", "-c", &script]);
        let mut cmd = sb.berth(&args);
        cmd.env("BERTH_CONFIG", &policy);
        let child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        assert!(
            eventually(Duration::from_secs(30), || started.exists()),
            "the container did not start"
        );
        let late = project.join("late");
        let st = Command::new("sh")
            .args([
                "-ec",
                &format!(
                    "mount -t tmpfs late {l}; echo late-mount > {l}/marker",
                    l = late.display()
                ),
            ])
            .status()
            .unwrap();
        assert!(st.success());
        let out = child.wait_with_output().unwrap();
        let _ = Command::new("umount").arg("-l").arg(&late).status();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            expect,
            "options {options}: a host mount made after start"
        );
    }
    drop(mounts);
}
