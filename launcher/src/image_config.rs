//! The image configuration that `berth-image` writes into every image it makes and that
//! `berth run` reads: one schema, defined here only, used by both.
//!
//! It lives at [`CONFIG_PATH`] inside the image. Field names follow the OCI image config
//! (`Env`, `Entrypoint`, `Cmd`, `WorkingDir`, `Labels`) so a config can be copied over as is.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where the config is stored inside an image, relative to its root.
pub const CONFIG_PATH: &str = ".berth/image.json";

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
    fn rejects_unknown_schema_and_bad_json() {
        assert!(ImageConfig::parse(r#"{"schemaVersion":2}"#)
            .unwrap_err()
            .contains("schemaVersion 2"));
        assert!(ImageConfig::parse("{")
            .unwrap_err()
            .contains("invalid image config"));
    }
}
