//! The container's /dev: a small tmpfs with the host's harmless nodes and a devpts instance of
//! its own, so pseudo-terminals can be opened inside (sshd sessions, tmux, expect, script).

use berth_tests::*;

#[test]
fn a_pseudo_terminal_can_be_opened_inside() {
    let sb = Sandbox::new("pty");
    for mode in ["mount", "extract"] {
        let r = run(sb.berth_demo(
            &["--mode", mode],
            &[
                "sh",
                "-c",
                "script -qec 'tty; id -u' /dev/null; grep ' /dev/pts ' /proc/self/mountinfo",
            ],
        ))
        .expect_ok(mode);
        let lines: Vec<&str> = r.stdout.lines().map(|l| l.trim_end_matches('\r')).collect();
        assert!(
            lines[0].starts_with("/dev/pts/"),
            "{mode}: script got no terminal: {}",
            r.stdout
        );
        assert_eq!(lines[1], user().uid.to_string(), "the pty is the user's");
        let mount = lines[2];
        assert!(
            mount.contains(" - devpts ") && mount.contains("ptmxmode=666"),
            "{mode}: a devpts instance of the container's own: {mount}"
        );
    }
}
