//! OCI / Docker schema 2 documents: manifests, indexes, image configs, and the choice of a
//! platform in an index.

use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

pub const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Everything we can read, for the registry's content negotiation (a registry answers 404 for
/// an OCI manifest when the client does not accept OCI).
pub const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

#[derive(Debug, Clone, Deserialize)]
pub struct Platform {
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub variant: Option<String>,
}

impl Platform {
    pub fn describe(&self) -> String {
        match &self.variant {
            Some(v) => format!("{}/{}/{v}", self.os, self.architecture),
            None => format!("{}/{}", self.os, self.architecture),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// A manifest or an index: the fields of both, told apart by `manifests`.
#[derive(Debug, Clone, Deserialize)]
pub struct Document {
    #[serde(rename = "schemaVersion", default)]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
    #[serde(default)]
    pub config: Option<Descriptor>,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

impl Document {
    pub fn parse(bytes: &[u8], what: &str) -> Result<Document, String> {
        let doc: Document = serde_json::from_slice(bytes)
            .map_err(|e| format!("{what} is not a valid manifest: {e}"))?;
        if doc.schema_version == 1 {
            return Err(format!("{what} is a Docker schema 1 manifest, which is not supported; push the image again with a current client"));
        }
        Ok(doc)
    }

    pub fn is_index(&self) -> bool {
        self.media_type == MT_OCI_INDEX
            || self.media_type == MT_DOCKER_LIST
            || (!self.manifests.is_empty() && self.config.is_none())
    }
}

/// The image config blob (only what berth uses).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ConfigBlob {
    #[serde(default)]
    pub config: Option<RunConfig>,
    #[serde(default)]
    pub rootfs: Option<RootFs>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct RunConfig {
    #[serde(rename = "Env", default)]
    pub env: Option<Vec<String>>,
    #[serde(rename = "Entrypoint", default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    pub cmd: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    pub working_dir: Option<String>,
    #[serde(rename = "Labels", default)]
    pub labels: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct RootFs {
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

impl ConfigBlob {
    pub fn parse(bytes: &[u8]) -> Result<ConfigBlob, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("image config is not valid JSON: {e}"))
    }

    pub fn runtime(&self) -> berth_image_config::RuntimeConfig {
        let c = self.config.clone().unwrap_or_default();
        berth_image_config::RuntimeConfig {
            env: c.env.unwrap_or_default(),
            entrypoint: c.entrypoint,
            cmd: c.cmd,
            working_dir: c.working_dir.filter(|w| !w.is_empty()),
            labels: c.labels.unwrap_or_default(),
        }
    }
}

/// `sha256:` and 64 lowercase hex digits: the only digests accepted (they also name cache files).
pub fn check_digest(d: &str) -> Result<&str, String> {
    let hex = d
        .strip_prefix("sha256:")
        .ok_or_else(|| format!("unsupported digest '{d}' (only sha256 is supported)"))?;
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(format!("malformed digest '{d}'"));
    }
    Ok(hex)
}

pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// Check a small document (manifest, config) against its digest.
pub fn verify_bytes(bytes: &[u8], digest: &str, what: &str) -> Result<(), String> {
    let got = sha256_digest(bytes);
    if got != digest {
        return Err(format!(
            "{what} {digest} failed verification: content has digest {got}; refusing it"
        ));
    }
    Ok(())
}

/// The platform wanted: `--platform os/arch[/variant]`, or linux and the host architecture.
pub fn wanted_platform(flag: Option<&str>) -> Result<Platform, String> {
    match flag {
        Some(s) => {
            let parts: Vec<&str> = s.split('/').collect();
            if !(2..=3).contains(&parts.len()) || parts.iter().any(|p| p.is_empty()) {
                return Err(format!(
                    "--platform '{s}' is not OS/ARCH[/VARIANT], e.g. linux/amd64"
                ));
            }
            Ok(Platform {
                os: parts[0].into(),
                architecture: parts[1].into(),
                variant: parts.get(2).map(|v| v.to_string()),
            })
        }
        None => Ok(Platform {
            os: "linux".into(),
            architecture: match std::env::consts::ARCH {
                "x86_64" => "amd64",
                "aarch64" => "arm64",
                "powerpc64" => "ppc64le",
                other => other,
            }
            .into(),
            variant: None,
        }),
    }
}

/// Pick the manifest for `want` in an index.
pub fn select_platform<'a>(index: &'a Document, want: &Platform) -> Result<&'a Descriptor, String> {
    let matches = |d: &&Descriptor| {
        d.platform.as_ref().is_some_and(|p| {
            p.os == want.os
                && p.architecture == want.architecture
                && (want.variant.is_none() || p.variant == want.variant)
        })
    };
    index.manifests.iter().find(matches).ok_or_else(|| {
        let have: Vec<String> = index
            .manifests
            .iter()
            .filter_map(|d| d.platform.as_ref().map(Platform::describe))
            .collect();
        format!(
            "no {} image in the index (it has: {}); choose one with --platform",
            want.describe(),
            if have.is_empty() {
                "none with a platform".into()
            } else {
                have.join(", ")
            }
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_checked() {
        assert!(check_digest(&sha256_digest(b"x")).is_ok());
        assert!(check_digest("sha256:../../etc").is_err());
        assert!(check_digest("sha512:abcd").is_err());
        assert!(verify_bytes(b"x", &sha256_digest(b"y"), "blob")
            .unwrap_err()
            .contains("failed verification"));
    }

    #[test]
    fn picks_the_platform() {
        let idx = Document::parse(br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
            {"digest":"sha256:1","platform":{"os":"linux","architecture":"arm64","variant":"v8"}},
            {"digest":"sha256:2","platform":{"os":"linux","architecture":"amd64"}}]}"#, "t").unwrap();
        assert!(idx.is_index());
        let amd = wanted_platform(Some("linux/amd64")).unwrap();
        assert_eq!(select_platform(&idx, &amd).unwrap().digest, "sha256:2");
        let arm = wanted_platform(Some("linux/arm64")).unwrap();
        assert_eq!(select_platform(&idx, &arm).unwrap().digest, "sha256:1");
        let err =
            select_platform(&idx, &wanted_platform(Some("linux/s390x")).unwrap()).unwrap_err();
        assert!(err.contains("linux/arm64/v8, linux/amd64"), "{err}");
        assert!(wanted_platform(Some("amd64")).is_err());
    }
}
