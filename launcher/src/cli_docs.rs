//! Man pages, shell completions and the `--version` text of berth's commands, generated from
//! their clap definitions (the text of `--help`), so that they cannot drift from the flags.

use std::path::{Path, PathBuf};

pub use clap_complete::Shell;

/// The `--version` text of the calling crate: its version, the git commit it was built from
/// and its enabled cargo features (set by its build script, launcher/build.rs).
#[macro_export]
macro_rules! long_version {
    () => {
        concat!(
            env!("CARGO_PKG_VERSION"),
            "\ncommit: ",
            env!("BERTH_GIT_COMMIT"),
            "\nfeatures: ",
            env!("BERTH_FEATURES")
        )
    };
}

/// The man pages of a command: NAME.1 and one per visible subcommand (NAME-SUB.1,
/// NAME-SUB-SUBSUB.1), as (file name, roff text).
pub fn man_pages(cmd: clap::Command) -> std::io::Result<Vec<(String, Vec<u8>)>> {
    fn add(cmd: &clap::Command, pages: &mut Vec<(String, Vec<u8>)>) -> std::io::Result<()> {
        let man = clap_mangen::Man::new(cmd.clone());
        let mut text = Vec::new();
        man.render(&mut text)?;
        pages.push((man.get_filename(), text));
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            add(sub, pages)?;
        }
        Ok(())
    }
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut pages = Vec::new();
    add(&cmd, &mut pages)?;
    Ok(pages)
}

/// Write [`man_pages`] into `dir` (created if missing); each page appears whole or not at all.
pub fn write_man_pages(cmd: clap::Command, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for (name, text) in man_pages(cmd)? {
        let path = dir.join(&name);
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, &text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .inspect_err(|_| {
                let _ = std::fs::remove_file(&tmp);
            })?;
        written.push(path);
    }
    Ok(written)
}

/// Print the completion script of `cmd` for `shell` on stdout. The script is made in memory
/// first: clap_complete panics on a failed write, and a reader that stops early (`| head`)
/// closes the pipe, which is not an error of ours.
pub fn print_completions(mut cmd: clap::Command, shell: Shell) -> std::io::Result<()> {
    use std::io::Write;
    let name = cmd.get_name().to_string();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut script);
    match std::io::stdout().lock().write_all(&script) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Every visible long flag of the command tree that has no help text or is missing from its
/// command's man page, as `PAGE: --FLAG`; empty when all are documented.
pub fn undocumented_flags(cmd: clap::Command) -> std::io::Result<Vec<String>> {
    let pages = man_pages(cmd.clone())?;
    let mut missing = Vec::new();
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut todo = vec![cmd];
    while let Some(c) = todo.pop() {
        let name = format!("{}.1", c.get_display_name().unwrap_or(c.get_name()));
        // roff writes a dash as `\-`.
        let page = pages
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| String::from_utf8_lossy(t).replace("\\-", "-"))
            .unwrap_or_default();
        for arg in c.get_arguments().filter(|a| !a.is_hide_set()) {
            let Some(long) = arg.get_long() else { continue };
            let flag = format!("--{long}");
            let in_page = page.match_indices(&flag).any(|(i, _)| {
                !page[i + flag.len()..]
                    .starts_with(|ch: char| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
            });
            let has_help = arg.get_help().or(arg.get_long_help()).is_some();
            if !in_page || !has_help {
                missing.push(format!("{name}: {flag}"));
            }
        }
        todo.extend(c.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    }
    Ok(missing)
}

/// For a command's tests: each page of `expected` that [`man_pages`] does not make, then each
/// page it makes whose name holds `unwanted` (such as a hidden subcommand); empty when none.
pub fn man_page_mismatches(
    cmd: clap::Command,
    expected: &[&str],
    unwanted: &str,
) -> std::io::Result<Vec<String>> {
    let names: Vec<String> = man_pages(cmd)?.into_iter().map(|p| p.0).collect();
    let mut wrong: Vec<String> = expected
        .iter()
        .filter(|page| !names.iter().any(|n| n == *page))
        .map(|page| format!("no {page} among {names:?}"))
        .collect();
    wrong.extend(
        names
            .iter()
            .filter(|n| n.contains(unwanted))
            .map(|n| format!("{n} is made")),
    );
    Ok(wrong)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgAction, Command};

    fn toy() -> Command {
        Command::new("toy").version("1").subcommand(
            Command::new("go")
                .about("Go somewhere")
                .arg(
                    Arg::new("fast")
                        .long("fast")
                        .action(ArgAction::SetTrue)
                        .help("Go fast"),
                )
                .subcommand(Command::new("deep").about("Deeper")),
        )
    }

    #[test]
    fn pages_for_the_command_and_each_subcommand() {
        let names: Vec<String> = man_pages(toy()).unwrap().into_iter().map(|p| p.0).collect();
        assert_eq!(names, ["toy.1", "toy-go.1", "toy-go-deep.1"]);
    }

    #[test]
    fn man_page_mismatches_name_missing_and_unwanted_pages() {
        let ok = man_page_mismatches(toy(), &["toy.1", "toy-go.1"], "generate-man").unwrap();
        assert_eq!(ok, Vec::<String>::new());
        let wrong = man_page_mismatches(toy(), &["toy-stop.1"], "deep").unwrap();
        assert_eq!(wrong.len(), 2, "{wrong:?}");
        assert!(wrong[0].starts_with("no toy-stop.1 among"), "{wrong:?}");
        assert_eq!(wrong[1], "toy-go-deep.1 is made");
    }

    #[test]
    fn a_documented_tree_passes() {
        assert_eq!(undocumented_flags(toy()).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn a_flag_without_help_is_reported() {
        let cmd = toy().mut_subcommand("go", |go| {
            go.arg(Arg::new("slow").long("slow").action(ArgAction::SetTrue))
        });
        assert_eq!(undocumented_flags(cmd).unwrap(), ["toy-go.1: --slow"]);
    }

    #[test]
    fn write_man_pages_leaves_only_whole_pages() {
        let dir = std::env::temp_dir().join(format!("berth-man-test-{}", std::process::id()));
        let written = write_man_pages(toy(), &dir).unwrap();
        assert_eq!(written.len(), 3);
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["toy-go-deep.1", "toy-go.1", "toy.1"]);
        let page = std::fs::read_to_string(dir.join("toy-go.1")).unwrap();
        assert!(page.starts_with(".ie"), "{page}");
        assert!(page.contains("\\-\\-fast"), "{page}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
