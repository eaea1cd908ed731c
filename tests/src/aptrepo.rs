//! A local apt repository on loopback for the fake-root tests: one tiny `.deb` whose tree has
//! a file owned by a non-root uid and whose postinst chowns a file and adds a system user,
//! indexed with `apt-ftparchive` and served by `busybox httpd` on 127.0.0.1.

use std::fs;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub const PACKAGE: &str = "berth-hello";
/// What the package's program prints.
pub const GREETING: &str = "hello from berth-hello";
/// The owner of a file in the package tree and of the file its postinst chowns.
pub const OWNER: u32 = 4242;
/// The system user the postinst creates.
pub const SYSTEM_USER: &str = "berthhello";

pub struct AptRepo {
    pub dir: PathBuf,
    pub port: u16,
    server: Child,
}

impl AptRepo {
    /// Build the package and the index under `base` (a new directory) and serve them.
    pub fn serve(base: &Path) -> AptRepo {
        let (tree, dir) = (base.join("pkg"), base.join("repo"));
        let _ = fs::remove_dir_all(base);
        for d in ["DEBIAN", "usr/bin", "usr/share/berth-hello"] {
            fs::create_dir_all(tree.join(d)).unwrap();
        }
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            tree.join("DEBIAN/control"),
            format!(
                "Package: {PACKAGE}\nVersion: 1.0\nArchitecture: all\n\
                 Maintainer: berth tests <root@localhost>\nDescription: berth fake-root test\n"
            ),
        )
        .unwrap();
        let postinst = format!(
            "#!/bin/sh\nset -e\nchown {OWNER}:{OWNER} /usr/share/berth-hello/state\n\
             adduser --system --no-create-home --quiet {SYSTEM_USER}\n"
        );
        executable(&tree.join("DEBIAN/postinst"), &postinst);
        executable(
            &tree.join("usr/bin").join(PACKAGE),
            &format!("#!/bin/sh\necho '{GREETING}'\n"),
        );
        let owned = tree.join("usr/share/berth-hello/owned");
        fs::write(&owned, "owned\n").unwrap();
        // dpkg-deb keeps the tree's owners (no --root-owner-group): the archive has uid 4242.
        chown(&owned, Some(OWNER), Some(OWNER)).unwrap();
        fs::write(tree.join("usr/share/berth-hello/state"), "state\n").unwrap();
        let deb = dir.join(format!("{PACKAGE}_1.0_all.deb"));
        checked(Command::new("dpkg-deb").arg("--build").arg(&tree).arg(&deb));
        let packages = Command::new("apt-ftparchive")
            .args(["packages", "."])
            .current_dir(&dir)
            .output()
            .expect("apt-ftparchive (apt-utils) is installed by scripts/install-deps.sh");
        assert!(packages.status.success(), "apt-ftparchive failed");
        fs::write(dir.join("Packages"), packages.stdout).unwrap();
        // A free port: taken from the kernel, released just before the server binds it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let server = Command::new("busybox")
            .args(["httpd", "-f", "-p", &format!("127.0.0.1:{port}"), "-h"])
            .arg(&dir)
            .stdin(Stdio::null())
            .spawn()
            .expect("busybox (busybox-static) is installed");
        let up = crate::eventually(std::time::Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up, "busybox httpd did not start on port {port}");
        AptRepo { dir, port, server }
    }

    /// A shell line that points the image's apt at this repository only.
    pub fn sources_line(&self) -> String {
        format!(
            "echo 'deb [trusted=yes] http://127.0.0.1:{} ./' > /etc/apt/sources.list; \
             rm -f /etc/apt/sources.list.d/*",
            self.port
        )
    }
}

impl Drop for AptRepo {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

fn executable(path: &Path, content: &str) {
    fs::write(path, content).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

fn checked(cmd: &mut Command) {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
