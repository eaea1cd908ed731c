//! A registry API v2 client: manifests with content negotiation, basic and bearer-token auth,
//! verified blob downloads into the layer cache with retries and resume.

use crate::cache::Cache;
use crate::cleanup::{cancelled, TempGuard};
use crate::oci::{self, Document, ACCEPT_MANIFESTS};
use crate::source::RegistryRef;
use base64::Engine;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

const MAX_DOC: u64 = 8 << 20;
const ATTEMPTS: u32 = 4;

pub struct Client {
    agent: ureq::Agent,
    base: String,
    reg: RegistryRef,
    creds: Option<(String, String)>,
    /// The `Authorization` value that worked last (shared by the download threads).
    auth: Mutex<Option<String>>,
}

enum Fail {
    Status(u16),
    Other(String),
}

/// `machine HOST login USER password PASS` lines (netrc style), as enroot reads them.
fn netrc_lookup(text: &str, host: &str, user: Option<&str>) -> Option<(String, String)> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut i = 0;
    while i < words.len() {
        if words[i] == "machine" && i + 1 < words.len() {
            let machine = words[i + 1];
            let (mut login, mut password) = (None, None);
            let mut j = i + 2;
            while j + 1 < words.len() && words[j] != "machine" {
                match words[j] {
                    "login" => login = Some(words[j + 1]),
                    "password" => password = Some(words[j + 1]),
                    _ => {}
                }
                j += 2;
            }
            if machine == host && (user.is_none() || login == user) {
                if let (Some(l), Some(p)) = (login, password) {
                    return Some((l.to_string(), p.to_string()));
                }
            }
            i = j;
        } else {
            i += 1;
        }
    }
    None
}

/// `$BERTH_REGISTRY_USER`/`$BERTH_REGISTRY_PASSWORD`, else the credentials file
/// (`$BERTH_CREDENTIALS`, default `~/.config/berth/credentials`).
pub fn credentials(reg: &RegistryRef) -> Option<(String, String)> {
    if let (Ok(u), Ok(p)) = (
        std::env::var("BERTH_REGISTRY_USER"),
        std::env::var("BERTH_REGISTRY_PASSWORD"),
    ) {
        if reg.user.is_none() || reg.user.as_deref() == Some(u.as_str()) {
            return Some((u, p));
        }
    }
    let file = std::env::var_os("BERTH_CREDENTIALS")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/berth/credentials"))
        })?;
    let text = std::fs::read_to_string(file).ok()?;
    netrc_lookup(&text, &reg.registry, reg.user.as_deref())
        .or_else(|| netrc_lookup(&text, reg.api_host(), reg.user.as_deref()))
}

/// `Bearer realm="...",service="...",scope="..."` -> (scheme, params).
fn parse_challenge(h: &str) -> (String, Vec<(String, String)>) {
    let (scheme, rest) = h.trim().split_once(' ').unwrap_or((h.trim(), ""));
    let mut params = Vec::new();
    let mut s = rest.trim();
    while let Some((key, after)) = s.split_once('=') {
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let (value, next) = if let Some(q) = after.strip_prefix('"') {
            match q.split_once('"') {
                Some((v, n)) => (v.to_string(), n),
                None => (q.to_string(), ""),
            }
        } else {
            match after.split_once(',') {
                Some((v, n)) => (v.trim().to_string(), n),
                None => (after.trim().to_string(), ""),
            }
        };
        params.push((key, value));
        s = next.trim_start_matches(',').trim();
    }
    (scheme.to_ascii_lowercase(), params)
}

impl Client {
    pub fn new(reg: &RegistryRef, insecure: bool) -> Result<Client, String> {
        let scheme = if reg.is_loopback() || insecure {
            "http"
        } else {
            "https"
        };
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(15))
            .timeout_read(Duration::from_secs(60))
            .user_agent(concat!("berth-image/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Client {
            agent,
            base: format!("{scheme}://{}", reg.api_host()),
            creds: credentials(reg),
            reg: reg.clone(),
            auth: Mutex::new(None),
        })
    }

    fn auth_header(&self) -> Option<String> {
        self.auth.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// ureq's error type is large: boxed, as clippy asks.
    fn send(&self, url: &str, accept: &str, from: u64) -> Result<ureq::Response, Box<ureq::Error>> {
        let mut req = self.agent.get(url).set("Accept", accept);
        if let Some(a) = self.auth_header() {
            req = req.set("Authorization", &a);
        }
        if from > 0 {
            req = req.set("Range", &format!("bytes={from}-"));
        }
        req.call().map_err(Box::new)
    }

    /// GET with one round of authentication when the registry asks for it.
    fn get(&self, path: &str, accept: &str, from: u64) -> Result<ureq::Response, Fail> {
        let url = format!("{}/v2/{}/{path}", self.base, self.reg.repository);
        let mut authenticated = false;
        loop {
            match self.send(&url, accept, from).map_err(|e| *e) {
                Ok(r) => return Ok(r),
                Err(ureq::Error::Status(401, resp)) if !authenticated => {
                    let challenge = resp.header("www-authenticate").unwrap_or("").to_string();
                    self.authenticate(&challenge).map_err(Fail::Other)?;
                    authenticated = true;
                }
                Err(ureq::Error::Status(401, _)) => return Err(Fail::Other(self.rejected())),
                Err(ureq::Error::Status(code, _)) => return Err(Fail::Status(code)),
                Err(ureq::Error::Transport(t)) => {
                    return Err(Fail::Other(format!(
                        "cannot reach registry {}: {t}",
                        self.reg.registry
                    )))
                }
            }
        }
    }

    fn rejected(&self) -> String {
        match &self.creds {
            Some((u, _)) => format!("registry {} rejected the credentials of user '{u}'; check BERTH_REGISTRY_USER/BERTH_REGISTRY_PASSWORD or the credentials file", self.reg.registry),
            None => format!("registry {} requires credentials: set BERTH_REGISTRY_USER and BERTH_REGISTRY_PASSWORD, or add 'machine {} login USER password PASS' to ~/.config/berth/credentials", self.reg.registry, self.reg.registry),
        }
    }

    fn basic(&self) -> Option<String> {
        self.creds.as_ref().map(|(u, p)| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        })
    }

    fn authenticate(&self, challenge: &str) -> Result<(), String> {
        let (scheme, params) = parse_challenge(challenge);
        let value = match scheme.as_str() {
            "basic" => self.basic().ok_or_else(|| self.rejected())?,
            "bearer" => {
                let param = |k: &str| {
                    params
                        .iter()
                        .find(|(key, _)| key == k)
                        .map(|(_, v)| v.clone())
                };
                let realm = param("realm").ok_or_else(|| {
                    format!(
                        "registry {} sent a token challenge without realm",
                        self.reg.registry
                    )
                })?;
                let mut req = self.agent.get(&realm);
                if let Some(s) = param("service") {
                    req = req.query("service", &s);
                }
                let scope = param("scope")
                    .unwrap_or_else(|| format!("repository:{}:pull", self.reg.repository));
                req = req.query("scope", &scope);
                if let Some(b) = self.basic() {
                    req = req.set("Authorization", &b);
                }
                let resp = match req.call() {
                    Ok(r) => r,
                    Err(ureq::Error::Status(401 | 403, _)) => return Err(self.rejected()),
                    Err(e) => return Err(format!("token request to {realm} failed: {e}")),
                };
                let body: serde_json::Value =
                    serde_json::from_reader(resp.into_reader().take(MAX_DOC))
                        .map_err(|e| format!("token server {realm} sent an invalid answer: {e}"))?;
                let token = body
                    .get("token")
                    .or_else(|| body.get("access_token"))
                    .and_then(|t| t.as_str())
                    .ok_or_else(|| format!("token server {realm} sent no token"))?;
                format!("Bearer {token}")
            }
            _ => {
                return Err(format!(
                    "registry {} asks for unsupported authentication '{challenge}'",
                    self.reg.registry
                ))
            }
        };
        *self.auth.lock().unwrap_or_else(|e| e.into_inner()) = Some(value);
        Ok(())
    }

    /// A small document; a body cut short is fetched again (a refused connection is not).
    fn read_doc(&self, path: &str, accept: &str, what: &str) -> Result<Vec<u8>, String> {
        let mut last_err = String::new();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(300 * attempt as u64));
            }
            let resp = self.get(path, accept, 0).map_err(|f| match f {
                Fail::Status(404) => format!(
                    "{what} not found in registry {} (404); check the name and tag",
                    self.reg.registry
                ),
                Fail::Status(c) => format!(
                    "registry {} answered HTTP {c} for {what}",
                    self.reg.registry
                ),
                Fail::Other(m) => m,
            })?;
            let mut buf = Vec::new();
            match resp.into_reader().take(MAX_DOC + 1).read_to_end(&mut buf) {
                Ok(_) if buf.len() as u64 > MAX_DOC => {
                    return Err(format!(
                        "{what} is larger than {MAX_DOC} bytes; refusing it"
                    ))
                }
                Ok(_) => return Ok(buf),
                Err(e) => last_err = e.to_string(),
            }
        }
        Err(format!(
            "reading {what} from registry {} failed after {ATTEMPTS} attempts: {last_err}",
            self.reg.registry
        ))
    }

    /// A manifest or index by tag or digest: (bytes, digest, parsed). By digest it is verified.
    pub fn manifest(&self, reference: &str) -> Result<(Vec<u8>, String, Document), String> {
        let what = format!("{}/{}:{reference}", self.reg.registry, self.reg.repository)
            .replace(":sha256:", "@sha256:");
        let bytes = self.read_doc(&format!("manifests/{reference}"), ACCEPT_MANIFESTS, &what)?;
        let digest = oci::sha256_digest(&bytes);
        if reference.starts_with("sha256:") {
            oci::verify_bytes(&bytes, reference, "manifest")?;
        }
        let doc = Document::parse(&bytes, &what)?;
        Ok((bytes, digest, doc))
    }

    /// A small blob (the image config), verified.
    pub fn small_blob(&self, digest: &str) -> Result<Vec<u8>, String> {
        oci::check_digest(digest)?;
        let bytes = self.read_doc(&format!("blobs/{digest}"), "*/*", &format!("blob {digest}"))?;
        oci::verify_bytes(&bytes, digest, "blob")?;
        Ok(bytes)
    }

    /// Make sure the layer `digest` is in the cache, verified. Returns whether it was there.
    /// `progress` is told how many bytes of the layer are on disk as they arrive (a resumed
    /// download starts where it stopped; one the server restarts goes back to 0).
    pub fn fetch_layer(
        &self,
        digest: &str,
        cache: &Cache,
        progress: &dyn Fn(u64),
    ) -> Result<bool, String> {
        let dest = cache.blob_path(digest)?;
        if dest.exists() {
            cache.touch(&dest);
            return Ok(true);
        }
        let tmp = TempGuard::new(cache.temp_path(digest)?);
        let mut last_err = String::new();
        for attempt in 0..ATTEMPTS {
            if cancelled() {
                return Err("interrupted".into());
            }
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(300 * attempt as u64));
            }
            let have = std::fs::metadata(tmp.path()).map(|m| m.len()).unwrap_or(0);
            let resp = match self.get(&format!("blobs/{digest}"), "*/*", have) {
                Ok(r) => r,
                Err(Fail::Status(404)) => {
                    return Err(format!(
                        "layer {digest} is missing from registry {} (404)",
                        self.reg.registry
                    ))
                }
                Err(Fail::Status(416)) => break, // asked past the end: what we have is the whole blob
                Err(Fail::Status(c)) => {
                    last_err = format!("HTTP {c}");
                    continue;
                }
                Err(Fail::Other(m)) => {
                    last_err = m;
                    continue;
                }
            };
            // 206: the server resumes where we stopped; 200: it starts over.
            let append = resp.status() == 206 && have > 0;
            match download_into(resp.into_reader(), tmp.path(), append, progress) {
                Ok(()) => {
                    last_err.clear();
                    break;
                }
                Err(e) => last_err = e,
            }
        }
        if !last_err.is_empty() {
            return Err(format!(
                "download of layer {digest} failed after {ATTEMPTS} attempts: {last_err}"
            ));
        }
        verify_file(tmp.path(), digest)?;
        std::fs::rename(tmp.path(), &dest)
            .map_err(|e| format!("cannot store layer {digest} in the cache: {e}"))?;
        Ok(false)
    }
}

fn download_into(
    mut body: impl Read,
    path: &Path,
    append: bool,
    progress: &dyn Fn(u64),
) -> Result<(), String> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    let mut have = if append {
        f.metadata().map(|m| m.len()).unwrap_or(0)
    } else {
        0
    };
    progress(have);
    let mut buf = vec![0u8; 256 << 10];
    loop {
        if cancelled() {
            return Err("interrupted".into());
        }
        let n = body
            .read(&mut buf)
            .map_err(|e| format!("connection lost: {e}"))?;
        if n == 0 {
            return Ok(());
        }
        f.write_all(&buf[..n])
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        have += n as u64;
        progress(have);
    }
}

/// Hash a file and compare; a mismatch names the digest.
pub fn verify_file(path: &Path, digest: &str) -> Result<(), String> {
    let mut f =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let got = format!("sha256:{:x}", h.finalize());
    if got != digest {
        return Err(format!(
            "layer {digest} failed verification: the content has digest {got}; refusing it"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_and_netrc() {
        let (s, p) = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/ubuntu:pull,push""#,
        );
        assert_eq!(s, "bearer");
        assert_eq!(
            p[0],
            ("realm".into(), "https://auth.docker.io/token".into())
        );
        assert_eq!(
            p[2],
            ("scope".into(), "repository:library/ubuntu:pull,push".into())
        );
        let (s, p) = parse_challenge(r#"Basic realm="Registry Realm""#);
        assert_eq!((s.as_str(), p.len()), ("basic", 1));
        let netrc =
            "machine a.io login u1 password p1\nmachine 127.0.0.1:5000 login bob password secret\n";
        assert_eq!(
            netrc_lookup(netrc, "127.0.0.1:5000", None),
            Some(("bob".into(), "secret".into()))
        );
        assert_eq!(netrc_lookup(netrc, "a.io", Some("bob")), None);
        assert_eq!(netrc_lookup(netrc, "b.io", None), None);
    }
}
