//! What berth needs to know about the calling user and the host, gathered once per run.

use crate::error::{Context, Error, Result};
use nix::unistd::{Gid, Group, Uid, User};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostUser {
    pub uid: u32,
    pub gid: u32,
    pub name: String,
    pub home: PathBuf,
    pub shell: String,
    pub gecos: String,
    /// Supplementary groups as `(gid, name)`; they keep granting access inside.
    pub groups: Vec<(u32, String)>,
}

impl HostUser {
    pub fn current() -> Result<HostUser> {
        let uid = Uid::current();
        let gid = Gid::current();
        let user = User::from_uid(uid)
            .ok()
            .flatten()
            .ok_or_else(|| Error::Usage(format!("uid {uid} has no passwd entry on this host")))?;
        let mut groups = Vec::new();
        for g in nix::unistd::getgroups().unwrap_or_default() {
            if g == gid {
                continue;
            }
            let name = Group::from_gid(g)
                .ok()
                .flatten()
                .map(|g| g.name)
                .unwrap_or_default();
            groups.push((g.as_raw(), name));
        }
        Ok(HostUser {
            uid: uid.as_raw(),
            gid: gid.as_raw(),
            name: user.name,
            home: user.dir,
            shell: user.shell.to_string_lossy().into_owned(),
            gecos: user.gecos.to_string_lossy().into_owned(),
            groups,
        })
    }

    pub fn primary_group_name(&self) -> String {
        Group::from_gid(Gid::from_raw(self.gid))
            .ok()
            .flatten()
            .map(|g| g.name)
            .unwrap_or_else(|| self.name.clone())
    }
}

/// Create `dir` (mode 0700) or check that an existing one is ours, a real directory and not
/// open to others: another user could otherwise plant symlinks or files in it.
pub fn ensure_private_dir(dir: &Path, uid: u32) -> Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).ctx(|| format!("cannot create {}", dir.display())),
    }
    let meta = std::fs::symlink_metadata(dir).ctx(|| format!("cannot stat {}", dir.display()))?;
    if !meta.is_dir() || meta.uid() != uid || meta.permissions().mode() & 0o022 != 0 {
        return Err(Error::Usage(format!(
            "{} is not a directory owned by you and closed to others; remove it or set \
             BERTH_STATE_DIR to a private directory",
            dir.display()
        )));
    }
    Ok(())
}
