//! The site's configuration as a front end hands it to the launcher: which policy file, and
//! where the per-user state directory is. A value in [`RunOptions`](crate::RunOptions), never
//! the process's environment, so a front end that runs inside a scheduler's process (the Slurm
//! plugin) changes nothing that the scheduler or the job would see.

use crate::error::Result;
use crate::policy::Policy;
use std::path::{Path, PathBuf};

/// Where a front end found the site's configuration (Slurm: plugstack.conf's `policy=` and
/// `runtime_dir=`). The default is what the `berth` command uses: `BERTH_CONFIG`, else the
/// installed policy; `BERTH_STATE_DIR`, else `berth-<uid>` in the policy's `runtime.cache_dir`,
/// else in /tmp.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Site {
    /// The policy's main file (its `conf.d` beside it); it must exist.
    pub policy: Option<PathBuf>,
    /// The calling user's state directory on this node, as the front end computed it (with
    /// [`user_state_dir`]).
    pub state_dir: Option<PathBuf>,
}

impl Site {
    /// The site policy, merged and checked: a broken one is an error, never no policy.
    pub fn policy(&self) -> Result<Policy> {
        Ok(Policy::load(self.policy.as_deref())?)
    }

    /// The user's state directory on this node: the extract cache, the staging mount point,
    /// the join sockets, named containers and imports live here.
    pub fn state_dir(&self, policy: &Policy, uid: u32) -> PathBuf {
        match &self.state_dir {
            Some(dir) => dir.clone(),
            None => match std::env::var_os("BERTH_STATE_DIR") {
                Some(dir) if !dir.is_empty() => PathBuf::from(dir),
                // /tmp is node-local on clusters; the policy's runtime.cache_dir replaces it.
                _ => user_state_dir(
                    policy.cache_dir.as_deref().unwrap_or(Path::new("/tmp")),
                    uid,
                ),
            },
        }
    }
}

/// The state directory of user `uid` under `base`: `base/berth-<uid>`, the one name every
/// front end and the launcher use.
pub fn user_state_dir(base: &Path, uid: u32) -> PathBuf {
    base.join(format!("berth-{uid}"))
}

/// `sub` (one name) in the state directory `state`, both created (mode 0700) or checked to be
/// the user's own and closed to others; returns its path.
pub fn private_state_subdir(state: &Path, sub: &str, uid: u32) -> Result<PathBuf> {
    crate::host::ensure_private_dir(state, uid)?;
    let dir = state.join(sub);
    crate::host::ensure_private_dir(&dir, uid)?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_state_dir_wins() {
        let policy = Policy {
            cache_dir: Some("/var/cache/b".into()),
            ..Policy::default()
        };
        let site = Site {
            policy: None,
            state_dir: Some("/run/n1/berth-7".into()),
        };
        assert_eq!(site.state_dir(&policy, 7), Path::new("/run/n1/berth-7"));
        assert_eq!(
            user_state_dir(Path::new("/var/cache/b"), 7),
            Path::new("/var/cache/b/berth-7")
        );
    }
}
