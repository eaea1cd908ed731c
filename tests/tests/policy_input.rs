//! The site policy as bytes on disk, read by every rank: a byte that is not UTF-8 and a glob
//! pattern that does not compile are refused at their `file:line`; a policy file or conf.d
//! entry that is a FIFO, a socket, a device or huge is refused at once. Each is one line, exit
//! 125, nothing runs, and nothing hangs (a bound kills a run that would).

use berth_tests::hostile::{run_bounded, BOUND};
use berth_tests::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

type Setup = Box<dyn Fn(&Path, &Path) -> (PathBuf, String)>;

#[test]
fn policy_input_is_refused_with_file_and_line_and_nothing_hangs() {
    let sb = Sandbox::new("policy-input");
    let image = demo_image();
    let dir = sb.root.join("etc-berth");
    let cases: Vec<(&str, Setup)> = vec![
        (
            "latin-1 comment",
            Box::new(|main, _| {
                fs::write(main, b"[runtime]\nmode = \"mount\"\n# caf\xe9\n").unwrap();
                (main.into(), ":3: byte 0xe9 at column 6 is not UTF-8".into())
            }),
        ),
        (
            "invalid glob",
            Box::new(|main, _| {
                fs::write(main, "[gpu]\ndevices = [\n  \"/dev/nvidia[0-9\",\n]\n").unwrap();
                (
                    main.into(),
                    ":3: invalid glob pattern '/dev/nvidia[0-9'".into(),
                )
            }),
        ),
        (
            "fifo in conf.d",
            Box::new(|_, confd| {
                let p = confd.join("10-fifo.toml");
                nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
                (p, ": is a FIFO, not a regular file".into())
            }),
        ),
        (
            "socket in conf.d",
            Box::new(|_, confd| {
                let p = confd.join("20-sock.toml");
                std::mem::forget(std::os::unix::net::UnixListener::bind(&p).unwrap());
                (p, ": is a socket, not a regular file".into())
            }),
        ),
        (
            "/dev/zero in conf.d",
            Box::new(|_, confd| {
                let p = confd.join("30-zero.toml");
                std::os::unix::fs::symlink("/dev/zero", &p).unwrap();
                (p, ": is a device, not a regular file".into())
            }),
        ),
        (
            "huge file in conf.d",
            Box::new(|_, confd| {
                let p = confd.join("40-huge.toml");
                fs::File::create(&p).unwrap().set_len(64 << 20).unwrap();
                (p, ": is larger than 4 MiB".into())
            }),
        ),
    ];
    for (what, setup) in cases {
        let _ = fs::remove_dir_all(&dir);
        let confd = dir.join("conf.d");
        fs::create_dir_all(&confd).unwrap();
        for d in [&dir, &confd] {
            fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
        }
        let main = dir.join("berth.toml");
        fs::write(&main, "# site\n").unwrap();
        let (file, want) = setup(&main, &confd);
        let want = format!("{}{want}", file.display());
        let mut run_cmd = sb.berth(&["run", image.to_str().unwrap(), "--", "echo", "ran"]);
        run_cmd.env("BERTH_CONFIG", &main);
        let check_cmd = sb.berth(&["policy", "check", main.to_str().unwrap()]);
        for cmd in [run_cmd, check_cmd] {
            let (r, killed) = run_bounded(cmd, &sb.root, BOUND);
            assert!(!killed, "{what}: berth hung reading the policy");
            assert_eq!(r.code, Some(125), "{what}: {}", r.stderr);
            assert!(r.stdout.is_empty(), "{what}: {}", r.stdout);
            assert_eq!(r.stderr.lines().count(), 1, "{what}: {}", r.stderr);
            assert!(
                r.stderr.contains(&want),
                "{what}: want {want}: {}",
                r.stderr
            );
        }
    }
}
