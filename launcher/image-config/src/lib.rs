//! The image configuration that `berth-image` writes into every image it makes and that
//! `berth run` reads: one schema, defined here only, used by both (berth-image without linking
//! the launcher).
//!
//! It lives at [`CONFIG_PATH`] inside the image. Field names follow the OCI image config
//! (`Env`, `Entrypoint`, `Cmd`, `WorkingDir`, `Labels`) so a config can be copied over as is.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where the config is stored inside an image, relative to its root.
pub const CONFIG_PATH: &str = ".berth/image.json";

/// The most berth reads of an image config: real ones are a few KiB, and an image must not be
/// able to make berth read without end (a link to `/dev/zero`) or fill its memory.
pub const CONFIG_MAX_BYTES: u64 = 1 << 20;

/// The error for a config that is a FIFO, a device... (`kind` is "a FIFO").
pub fn not_regular(kind: &str) -> String {
    format!("`/{CONFIG_PATH}` in the image is {kind}, not a regular file (rebuild the image with berth-image)")
}

/// The error for a config over [`CONFIG_MAX_BYTES`].
pub fn too_large() -> String {
    format!(
        "`/{CONFIG_PATH}` in the image is larger than 1 MiB (rebuild the image with berth-image)"
    )
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(rename = "schemaVersion", default = "one")]
    pub schema_version: u32,
    #[serde(default)]
    pub config: RuntimeConfig,
    /// Where the image came from (registry reference, manifest digest...); informational.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub source: BTreeMap<String, String>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RuntimeConfig {
    #[serde(rename = "Env", default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(
        rename = "Entrypoint",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(
        rename = "WorkingDir",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub working_dir: Option<String>,
    #[serde(rename = "Labels", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl ImageConfig {
    pub fn parse(text: &str) -> Result<Self, String> {
        let config: ImageConfig = serde_json::from_str(text)
            .map_err(|e| format!("invalid image config {CONFIG_PATH}: {e}"))?;
        if config.schema_version != 1 {
            return Err(format!(
                "image config {CONFIG_PATH} has schemaVersion {}, this berth reads 1; upgrade berth",
                config.schema_version
            ));
        }
        Ok(config)
    }

    /// Parse the bytes of a config file: at most [`CONFIG_MAX_BYTES`], UTF-8, then JSON.
    pub fn parse_bytes(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() as u64 > CONFIG_MAX_BYTES {
            return Err(too_large());
        }
        let text = std::str::from_utf8(bytes)
            .map_err(|e| format!("invalid image config {CONFIG_PATH}: not UTF-8 ({e})"))?;
        Self::parse(text)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("image config serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_oci_style_fields_and_round_trips() {
        let text = r#"{"schemaVersion":1,"config":{"Env":["PATH=/usr/bin","A=b"],
            "Entrypoint":["/entry.sh"],"Cmd":["run"],"WorkingDir":"/work","Labels":{"k":"v"}}}"#;
        let c = ImageConfig::parse(text).unwrap();
        assert_eq!(c.config.env, vec!["PATH=/usr/bin", "A=b"]);
        assert_eq!(
            c.config.entrypoint.as_deref(),
            Some(&["/entry.sh".to_string()][..])
        );
        assert_eq!(c.config.working_dir.as_deref(), Some("/work"));
        assert_eq!(ImageConfig::parse(&c.to_json()).unwrap(), c);
    }

    #[test]
    fn bytes_are_bounded_and_utf8() {
        let ok = br#"{"schemaVersion":1}"#;
        assert_eq!(
            ImageConfig::parse_bytes(ok).unwrap(),
            ImageConfig::parse("{}").unwrap()
        );
        let big = vec![b' '; CONFIG_MAX_BYTES as usize + 1];
        assert!(ImageConfig::parse_bytes(&big)
            .unwrap_err()
            .contains("larger than 1 MiB"));
        assert!(ImageConfig::parse_bytes(b"{\"a\":\"caf\xe9\"}")
            .unwrap_err()
            .contains("not UTF-8"));
    }

    #[test]
    fn rejects_unknown_schema_and_bad_json() {
        assert!(ImageConfig::parse(r#"{"schemaVersion":2}"#)
            .unwrap_err()
            .contains("schemaVersion 2"));
        assert!(ImageConfig::parse("{")
            .unwrap_err()
            .contains("invalid image config"));
    }
}
