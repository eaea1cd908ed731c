//! What the tasks of a step decide once per node: the first task to take a node-local lock does
//! the work (a registry import, the fate of a named container) and records its result, success
//! or the one error, for the step; the step's other tasks read the record and get the same
//! answer without doing the work again (no second registry round trip, no second opinion on
//! whether the named container exists). pyxis decides these once per step in slurmstepd.

use berth_launcher::Error;
use nix::fcntl::{Flock, FlockArg};
use std::ffi::OsStr;
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Run `work` once for step `job.step` on this node under `dir/<stem>.lock`, and record its
/// result in `dir/<stem>.step` ("JOB.STEP.PPID", then "ok VALUE" or "error MESSAGE"). A record of
/// another step is stale: the work is done again (a later step may succeed where one failed).
pub fn once_per_step(
    dir: &Path,
    stem: &str,
    job: u32,
    step: u32,
    work: impl FnOnce() -> Result<String, Error>,
) -> Result<String, Error> {
    let lock = std::fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join(format!("{stem}.lock")))
        .map_err(|e| Error::Image(format!("cannot lock in {}: {e}", dir.display())))?;
    let _lock = Flock::lock(lock, FlockArg::LockExclusive)
        .map_err(|(_, e)| Error::Image(format!("cannot lock: {e}")))?;
    let record = dir.join(format!("{stem}.step"));
    // The step's slurmstepd (the tasks' parent) too: a job id Slurm gives again after its
    // state was reset must not find an old record.
    let this = format!("{job}.{step}.{}", nix::unistd::getppid());
    if let Some(done) = read_record(&record, &this) {
        return done;
    }
    let result = work();
    let line = match &result {
        Ok(v) => format!("ok {v}"),
        Err(e) => format!("error {e}"),
    };
    // Written whole, then renamed: a task never reads half a record.
    let tmp = dir.join(format!("{stem}.step.tmp"));
    let written = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(format!("{this}\n{line}\n").as_bytes()))
        .and_then(|_| std::fs::rename(&tmp, &record));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::Image(format!(
            "cannot record the result in {}: {e}",
            record.display()
        )));
    }
    result
}

/// The recorded result of step `this`, if the record is its own.
fn read_record(record: &Path, this: &str) -> Option<Result<String, Error>> {
    let text = std::fs::read_to_string(record).ok()?;
    let (step, line) = text.split_once('\n')?;
    if step != this {
        return None;
    }
    let line = line.trim_end_matches('\n');
    Some(match line.split_once(' ') {
        Some(("ok", v)) => Ok(v.to_string()),
        Some(("error", e)) => Err(Error::Image(e.to_string())),
        _ => return None,
    })
}

/// The image a named container was created from, kept in its saved layer's directory
/// (`<state>/named/<key>/image`): the container exists on this node when it is there.
pub fn saved_image(state: &Path, key: &str) -> Option<PathBuf> {
    let bytes = std::fs::read(image_file(state, key)).ok()?;
    (!bytes.is_empty()).then(|| PathBuf::from(OsStr::from_bytes(&bytes)))
}

/// Remember the image a named container is created from.
pub fn record_image(state: &Path, key: &str, image: &Path) -> Result<(), Error> {
    let file = image_file(state, key);
    let dir = file.parent().expect("in a directory");
    let tmp = dir.join("image.tmp");
    std::fs::create_dir_all(dir)
        .and_then(|_| std::fs::write(&tmp, image.as_os_str().as_bytes()))
        .and_then(|_| std::fs::rename(&tmp, &file))
        .map_err(|e| {
            Error::Image(format!(
                "cannot record the named container's image in {}: {e}",
                dir.display()
            ))
        })
}

fn image_file(state: &Path, key: &str) -> PathBuf {
    state.join("named").join(key).join("image")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// A fresh directory of this test's own (removed by the next run of the test).
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("berth-named-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn the_first_task_works_the_others_read_its_result() {
        let dir = scratch("once");
        let runs = Cell::new(0);
        let fail = || {
            runs.set(runs.get() + 1);
            Err::<String, _>(Error::Image("cannot import x: manifest unknown".into()))
        };
        for _ in 0..4 {
            let e = once_per_step(dir.as_path(), "d", 7, 0, fail).unwrap_err();
            assert_eq!(e.to_string(), "cannot import x: manifest unknown");
        }
        assert_eq!(runs.get(), 1, "one attempt for the step");
        // Another step tries again.
        let ok = || {
            runs.set(runs.get() + 1);
            Ok("/s/x.sqsh".to_string())
        };
        assert_eq!(
            once_per_step(dir.as_path(), "d", 7, 1, ok).unwrap(),
            "/s/x.sqsh"
        );
        assert_eq!(
            once_per_step(dir.as_path(), "d", 7, 1, ok).unwrap(),
            "/s/x.sqsh"
        );
        assert_eq!(runs.get(), 2);
    }

    #[test]
    fn a_named_container_remembers_its_image() {
        let dir = scratch("image");
        assert_eq!(saved_image(dir.as_path(), "slurm-7-env-n1"), None);
        record_image(dir.as_path(), "slurm-7-env-n1", Path::new("/i/a b.sqsh")).unwrap();
        assert_eq!(
            saved_image(dir.as_path(), "slurm-7-env-n1"),
            Some(PathBuf::from("/i/a b.sqsh"))
        );
    }
}
