//! What `berth-image import SOURCE` can read, parsed from its command-line form.

use std::net::IpAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq)]
pub struct RegistryRef {
    /// The user named in the reference (`USER@...`), for the credential lookup.
    pub user: Option<String>,
    /// As written (`docker.io`, `127.0.0.1:5000`): the key for credentials.
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl RegistryRef {
    /// Host to talk to (Docker Hub's API lives on another name than its image names).
    pub fn api_host(&self) -> &str {
        if self.registry == "docker.io" {
            "registry-1.docker.io"
        } else {
            &self.registry
        }
    }

    pub fn reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    pub fn display(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => format!("{}/{}@{d}", self.registry, self.repository),
            (None, Some(t)) => format!("{}/{}:{t}", self.registry, self.repository),
            (None, None) => format!("{}/{}:latest", self.registry, self.repository),
        }
    }

    /// Loopback registries (tests, local mirrors) speak plain http.
    pub fn is_loopback(&self) -> bool {
        let host = self.registry.as_str();
        let host = if let Some(rest) = host.strip_prefix('[') {
            rest.split(']').next().unwrap_or("")
        } else {
            host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
        };
        host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    Registry(RegistryRef),
    OciDir { dir: PathBuf, tag: Option<String> },
    OciArchive { file: PathBuf, tag: Option<String> },
    DockerArchive { file: PathBuf },
    Rootfs(PathBuf),
    Sif(PathBuf),
}

/// `PATH[:TAG]` of the `oci:` forms; a colon in the last component starts the tag.
fn path_and_tag(s: &str) -> (PathBuf, Option<String>) {
    match s.rsplit_once(':') {
        Some((p, t)) if !t.contains('/') && !p.is_empty() => {
            (PathBuf::from(p), Some(t.to_string()))
        }
        _ => (PathBuf::from(s), None),
    }
}

pub fn parse_source(s: &str) -> Result<Source, String> {
    if let Some(rest) = s.strip_prefix("docker://") {
        return parse_registry_ref(rest).map(Source::Registry);
    }
    if let Some(rest) = s.strip_prefix("oci-archive:") {
        let (file, tag) = path_and_tag(rest);
        return Ok(Source::OciArchive { file, tag });
    }
    if let Some(rest) = s.strip_prefix("oci:") {
        let (dir, tag) = path_and_tag(rest);
        return Ok(Source::OciDir { dir, tag });
    }
    if let Some(rest) = s.strip_prefix("docker-archive:") {
        return Ok(Source::DockerArchive {
            file: PathBuf::from(rest),
        });
    }
    if let Some(rest) = s.strip_prefix("dir:") {
        return Ok(Source::Rootfs(PathBuf::from(rest)));
    }
    if crate::sif::is_sif(std::path::Path::new(s)) {
        return Ok(Source::Sif(PathBuf::from(s)));
    }
    // Paths look like paths; everything else is an image name (the pyxis/enroot form).
    if s.starts_with('/') || s.starts_with('.') || std::path::Path::new(s).is_dir() {
        return Ok(Source::Rootfs(PathBuf::from(s)));
    }
    parse_registry_ref(s).map(Source::Registry)
}

/// `[USER@][REGISTRY#]IMAGE[:TAG]` (enroot/pyxis) or `[USER@]REGISTRY/REPO[:TAG|@sha256:...]`.
pub fn parse_registry_ref(s: &str) -> Result<RegistryRef, String> {
    let bad = |why: &str| {
        format!("'{s}' is not an image reference ({why}); use docker://REGISTRY/REPO[:TAG|@sha256:DIGEST]")
    };
    let mut rest = s;
    let mut digest = None;
    if let Some((r, d)) = rest.rsplit_once('@') {
        if d.starts_with("sha256:") {
            crate::oci::check_digest(d).map_err(|e| bad(&e))?;
            digest = Some(d.to_string());
            rest = r;
        }
    }
    let mut user = None;
    if let Some((u, r)) = rest.split_once('@') {
        if u.is_empty() || u.contains('/') {
            return Err(bad("bad user name"));
        }
        user = Some(u.to_string());
        rest = r;
    }
    let (registry, image) = if let Some((reg, img)) = rest.split_once('#') {
        (reg.to_string(), img)
    } else {
        match rest.split_once('/') {
            Some((first, img))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), img)
            }
            _ => ("docker.io".to_string(), rest),
        }
    };
    let (repo, tag) = match image.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r, Some(t.to_string())),
        _ => (image, None),
    };
    if registry.is_empty() || repo.is_empty() {
        return Err(bad("empty registry or image name"));
    }
    let repo_ok = repo.split('/').all(|c| {
        !c.is_empty()
            && c.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    });
    if !repo_ok {
        return Err(bad(
            "repository names are lowercase letters, digits, '.', '_', '-' and '/'",
        ));
    }
    if let Some(t) = &tag {
        if t.is_empty()
            || t.len() > 128
            || !t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(bad("bad tag"));
        }
    }
    let repository = if registry == "docker.io" && !repo.contains('/') {
        format!("library/{repo}")
    } else {
        repo.to_string()
    };
    let tag = if tag.is_none() && digest.is_none() {
        Some("latest".to_string())
    } else {
        tag
    };
    Ok(RegistryRef {
        user,
        registry,
        repository,
        tag,
        digest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(s: &str) -> RegistryRef {
        match parse_source(s).unwrap() {
            Source::Registry(r) => r,
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn registry_forms() {
        let r = reg("docker://127.0.0.1:5000/demo/app:v1");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.reference()),
            ("127.0.0.1:5000", "demo/app", "v1")
        );
        assert!(r.is_loopback());
        let r = reg("ubuntu");
        assert_eq!(
            (r.api_host(), r.repository.as_str(), r.reference()),
            ("registry-1.docker.io", "library/ubuntu", "latest")
        );
        assert!(!r.is_loopback());
        let r = reg("alice@nvcr.io#nvidia/pytorch:23.01-py3");
        assert_eq!(r.user.as_deref(), Some("alice"));
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.reference()),
            ("nvcr.io", "nvidia/pytorch", "23.01-py3")
        );
        let d = format!("sha256:{}", "a".repeat(64));
        let r = reg(&format!("docker://localhost:5000/x@{d}"));
        assert_eq!((r.tag.clone(), r.reference()), (None, d.as_str()));
        assert!(r.is_loopback());
        assert!(reg("docker://[::1]:5000/x").is_loopback());
        assert!(parse_source("docker://Bad/Repo").is_err());
        assert!(parse_source("docker://h.io/x@sha256:zz").is_err());
    }

    #[test]
    fn local_forms() {
        assert_eq!(
            parse_source("oci:/tmp/l:v2").unwrap(),
            Source::OciDir {
                dir: "/tmp/l".into(),
                tag: Some("v2".into())
            }
        );
        assert_eq!(
            parse_source("oci:/tmp/l").unwrap(),
            Source::OciDir {
                dir: "/tmp/l".into(),
                tag: None
            }
        );
        assert_eq!(
            parse_source("docker-archive:a.tar").unwrap(),
            Source::DockerArchive {
                file: "a.tar".into()
            }
        );
        assert_eq!(
            parse_source("./rootfs").unwrap(),
            Source::Rootfs("./rootfs".into())
        );
    }
}
