//! The user's own mounts (`--mount`), last, and the site's rules they must pass.

use super::probe::{Host, RealHost};
use super::{Action, Ctx, Step};
use crate::error::{usage, Result};
use crate::host::HostUser;
use crate::options::{MountKind, MountSpec};
use crate::policy::{self, Policy, Rule};
use std::path::{Path, PathBuf};

/// The `--mount` steps, after the site's rules allowed each.
pub(super) fn user_mount_steps(ctx: &Ctx, steps: &mut Vec<Step>) -> Result<()> {
    let (opts, policy) = (ctx.opts, ctx.policy);
    if !opts.mounts.is_empty() && !policy.user_mounts.enabled {
        return usage("user mounts are disabled by the site policy (user_mounts.enabled = false)");
    }
    for m in &opts.mounts {
        check_user_mount_on(ctx.host, m, policy, ctx.user)?;
    }
    for m in &opts.mounts {
        let action = match m.kind {
            MountKind::Bind => {
                if !ctx.host.exists(&m.source) {
                    return usage(format!(
                        "mount source {} does not exist (check the path in --mount {}:{})",
                        m.source.display(),
                        m.source.display(),
                        m.target.display()
                    ));
                }
                Action::Bind {
                    source: ctx
                        .host
                        .canonicalize(&m.source)
                        .unwrap_or_else(|| m.source.clone()),
                    recursive: m.recursive,
                    readonly: m.readonly,
                    propagation: m.propagation,
                    noexec: m.noexec,
                    create: m.create,
                }
            }
            MountKind::Tmpfs => Action::Tmpfs {
                options: m.tmpfs_options.clone(),
                readonly: m.readonly,
                noexec: m.noexec,
            },
            MountKind::Umount => {
                check_umount(steps, &m.target)?;
                Action::Umount
            }
        };
        steps.push(Step {
            target: m.target.clone(),
            action,
            origin: "--mount".into(),
        });
    }
    Ok(())
}

/// A user mount must pass the site's rules; a refusal names the rule and where it is written.
pub fn check_user_mount(m: &MountSpec, policy: &Policy, user: &HostUser) -> Result<()> {
    check_user_mount_on(&RealHost, m, policy, user)
}

/// [`check_user_mount`], resolving the source's symlinks on `host`.
fn check_user_mount_on(
    host: &dyn Host,
    m: &MountSpec,
    policy: &Policy,
    user: &HostUser,
) -> Result<()> {
    let (source, target) = (m.source.as_path(), m.target.as_path());
    let expand =
        |r: &Rule| PathBuf::from(policy::expand(&r.path, &user.name, &user.home, user.uid));
    let rules = &policy.user_mounts;
    if m.kind != MountKind::Bind {
        // No host source: only the target rules apply.
        return check_target_rules(target, rules, &expand);
    }
    // Judge the real path, so a symlink cannot lead past the rules.
    let real = host
        .canonicalize(source)
        .unwrap_or_else(|| source.to_path_buf());
    if let Some(rule) = rules
        .denied_sources
        .iter()
        .find(|r| real.starts_with(expand(r)))
    {
        return usage(format!(
            "mount source {} is denied by the site policy (denied_sources {} at {})",
            source.display(),
            rule.path,
            rule.origin
        ));
    }
    if let Some(allowed) = &rules.allowed_sources {
        if !allowed.iter().any(|r| real.starts_with(expand(r))) {
            let list: Vec<String> = allowed
                .iter()
                .map(|r| expand(r).display().to_string())
                .collect();
            let at = allowed
                .first()
                .map(|r| r.origin.to_string())
                .unwrap_or_default();
            return usage(format!(
                "mount source {} is outside the sources the site allows ({}; allowed_sources at {at})",
                source.display(),
                list.join(", ")
            ));
        }
    }
    check_target_rules(target, rules, &expand)
}

fn check_target_rules(
    target: &Path,
    rules: &policy::UserMountRules,
    expand: &dyn Fn(&Rule) -> PathBuf,
) -> Result<()> {
    if let Some(rule) = rules
        .denied_targets
        .iter()
        .find(|r| target.starts_with(expand(r)))
    {
        return usage(format!(
            "mount target {} is denied by the site policy (denied_targets {} at {})",
            target.display(),
            rule.path,
            rule.origin
        ));
    }
    Ok(())
}

/// `umount:DST` removes a mount the job may do without (its home, its working directory, /tmp,
/// its own --mounts), never one the site requires (site mounts, devices, PMIx, the scheduler's).
fn check_umount(steps: &[Step], target: &Path) -> Result<()> {
    let Some(step) = steps.iter().rev().find(|s| {
        s.target == target
            && matches!(
                s.action,
                Action::Bind { .. } | Action::Tmpfs { .. } | Action::Libraries { .. }
            )
    }) else {
        return usage(format!(
            "bad mount 'umount:{}': nothing is mounted there in the container",
            target.display()
        ));
    };
    let removable = matches!(step.origin.as_str(), "home" | "cwd" | "--mount")
        || (step.origin == "default"
            && matches!(
                target.to_str(),
                Some("/tmp" | "/etc/hosts" | "/etc/resolv.conf")
            ));
    if !removable {
        return usage(format!(
            "bad mount 'umount:{}': it is mounted by {}, which a job cannot remove",
            target.display(),
            step.origin
        ));
    }
    Ok(())
}
