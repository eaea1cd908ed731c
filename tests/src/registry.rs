//! Harness for `berth-image` tests: a real Docker distribution registry (Debian's
//! `docker-registry`) on 127.0.0.1, OCI image layouts written here from hand-made layers, and
//! `skopeo copy` to push them.

use sha2::{Digest, Sha256};
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

pub fn need_tool(tool: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is missing: install the Debian package {package} (scripts/install-deps.sh does)"
    );
}

/// The `berth-image` binary under test, copied where the test user can run it.
pub fn berth_image_bin() -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let built = match std::env::var_os("BERTH_IMAGE_BIN") {
            Some(p) => PathBuf::from(p),
            None => std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| crate::workspace_root().join("target"))
                .join("debug/berth-image"),
        };
        assert!(
            built.exists(),
            "{} is missing: run tests/run (or cargo build -p berth-image) first",
            built.display()
        );
        let dir = crate::per_process_dir("berth-test-imgbin");
        let copy = dir.join("berth-image");
        crate::copy_executable(&built, &copy);
        fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).unwrap();
        copy
    })
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// A running `docker-registry`, killed when dropped.
pub struct Registry {
    child: Child,
    pub addr: String,
    pub dir: PathBuf,
}

impl Registry {
    /// Start a registry; with `htpasswd` = (user, password) it requires basic auth.
    pub fn start(name: &str, htpasswd: Option<(&str, &str)>) -> Registry {
        Registry::start_on(name, htpasswd, "127.0.0.1")
    }

    /// Start a registry listening on `ip` (a loopback address, or the test cluster's bridge).
    pub fn start_on(name: &str, htpasswd: Option<(&str, &str)>, ip: &str) -> Registry {
        need_tool("docker-registry", "docker-registry");
        let dir = PathBuf::from(format!(
            "/tmp/berth-tests/registry-{name}-{}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("storage")).unwrap();
        // A free port: bind to 0, read it, release it for the registry.
        let port = TcpListener::bind(format!("{ip}:0"))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("{ip}:{port}");
        let mut auth = String::new();
        if let Some((user, password)) = htpasswd {
            need_tool("htpasswd", "apache2-utils");
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .unwrap();
            assert!(out.status.success(), "htpasswd failed");
            fs::write(dir.join("htpasswd"), &out.stdout).unwrap();
            auth = format!(
                "auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n",
                dir.join("htpasswd").display()
            );
        }
        let config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{auth}",
            dir.join("storage").display()
        );
        fs::write(dir.join("config.yml"), config).unwrap();
        let log = fs::File::create(dir.join("registry.log")).unwrap();
        let mut cmd = Command::new("docker-registry");
        cmd.arg("serve")
            .arg(dir.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // The registry goes with the test thread that started it, even if the test panics.
        // SAFETY: the hook runs between fork and exec and only calls prctl, which is
        // async-signal-safe; its result is ignored, as before.
        unsafe {
            cmd.pre_exec(|| {
                let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("start docker-registry");
        let reg = Registry { child, addr, dir };
        // Bounded wait for the API (not a timing assertion: only keeps a broken run from hanging).
        let up = crate::eventually(Duration::from_secs(30), || {
            reg.http_status("GET", "/v2/").is_some()
        });
        assert!(
            up,
            "docker-registry did not come up on {}: {}",
            reg.addr,
            fs::read_to_string(reg.dir.join("registry.log")).unwrap_or_default()
        );
        reg
    }

    /// Status code of a plain HTTP request to the registry, or None if it does not answer.
    pub fn http_status(&self, method: &str, path: &str) -> Option<u16> {
        let mut s = TcpStream::connect(&self.addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        )
        .ok()?;
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        resp.split_whitespace().nth(1)?.parse().ok()
    }

    /// `skopeo copy` an OCI layout's tag to `repo:tag` here (`extra`: e.g. `--all`,
    /// `--format v2s2`, `--dest-creds u:p`).
    pub fn push(&self, layout: &Path, src_tag: &str, dest: &str, extra: &[&str]) {
        need_tool("skopeo", "skopeo");
        let out = Command::new("skopeo")
            .args([
                "--insecure-policy",
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
            ])
            .args(extra)
            .arg(format!("oci:{}:{src_tag}", layout.display()))
            .arg(format!("docker://{}/{dest}", self.addr))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo copy to {dest} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The file holding a blob in the registry's storage (for tampering with it).
    pub fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.dir.join(format!(
            "storage/docker/registry/v2/blobs/sha256/{}/{hex}/data",
            &hex[..2]
        ))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// One tar entry of a hand-made layer. Names are written raw, so hostile ones (`../x`) are
/// possible: the point of some tests.
#[derive(Clone, Copy)]
pub enum Entry<'a> {
    Dir(&'a str, u32),
    File(&'a str, &'a [u8], u32),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    CharDev(&'a str, u32, u32),
    Fifo(&'a str),
}

pub fn tar_layer(entries: &[Entry]) -> Vec<u8> {
    tar_with_host_files(Path::new("/"), &[], entries)
}

/// A layer with copies of real files under `dir` (named relative to it), then `entries`.
pub fn tar_with_host_files(dir: &Path, host: &[&str], entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for p in host {
        b.append_path_with_name(dir.join(p), p)
            .unwrap_or_else(|e| panic!("cannot add {} to a layer: {e}", dir.join(p).display()));
    }
    for e in entries {
        let mut h = tar::Header::new_gnu();
        let (name, kind, mode, data, link): (&str, tar::EntryType, u32, &[u8], &str) = match e {
            Entry::Dir(n, m) => (n, tar::EntryType::Directory, *m, b"", ""),
            Entry::File(n, d, m) => (n, tar::EntryType::Regular, *m, d, ""),
            Entry::Symlink(n, t) => (n, tar::EntryType::Symlink, 0o777, b"", t),
            Entry::Hardlink(n, t) => (n, tar::EntryType::Link, 0o644, b"", t),
            Entry::CharDev(n, _, _) => (n, tar::EntryType::Char, 0o666, b"", ""),
            Entry::Fifo(n) => (n, tar::EntryType::Fifo, 0o644, b"", ""),
        };
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000);
        if let Entry::CharDev(_, major, minor) = e {
            h.set_device_major(*major).unwrap();
            h.set_device_minor(*minor).unwrap();
        }
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

/// A layer holding `/big`, a GNU sparse file of `real` bytes with 4 KiB of data at each end:
/// a few KiB of tar for any size.
pub fn sparse_layer(real: u64) -> Vec<u8> {
    fn octal(field: &mut [u8], v: u64) {
        let text = format!("{v:0w$o}", w = field.len() - 1);
        field[..text.len()].copy_from_slice(text.as_bytes());
    }
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::GNUSparse);
    h.set_mode(0o644);
    h.set_size(8192);
    h.set_mtime(1_700_000_000);
    let g = h.as_gnu_mut().unwrap();
    g.name[..3].copy_from_slice(b"big");
    octal(&mut g.sparse[0].offset, 0);
    octal(&mut g.sparse[0].numbytes, 4096);
    octal(&mut g.sparse[1].offset, real - 4096);
    octal(&mut g.sparse[1].numbytes, 4096);
    octal(&mut g.realsize, real);
    h.set_cksum();
    let mut data = vec![b'a'; 4096];
    data.extend(vec![b'z'; 4096]);
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, &data[..]).unwrap();
    b.into_inner().unwrap()
}

/// The layer of a minimal shell image: dash and cat (from the demo image's root) and
/// `/srv/hello.txt` holding `hello`.
pub fn shell_layer(hello: &[u8]) -> Vec<u8> {
    shell_layer_with(hello, &[])
}

/// [`shell_layer`] with more files of the demo image's root (paths relative to it).
pub fn shell_layer_with(hello: &[u8], more: &[&str]) -> Vec<u8> {
    let rootfs = crate::demo_image().parent().unwrap().join("demo-rootfs");
    shell_tar(
        &rootfs,
        more,
        &[
            Entry::Dir("srv/", 0o755),
            Entry::File("srv/hello.txt", hello, 0o644),
        ],
    )
}

/// A layer with dash and cat, their libraries and the files `more` from `rootfs` (a root
/// like the demo image's), the links a merged-/usr root needs, then `entries`.
pub fn shell_tar(rootfs: &Path, more: &[&str], entries: &[Entry]) -> Vec<u8> {
    let mut host = vec![
        "usr/bin/dash",
        "usr/bin/cat",
        "usr/lib/x86_64-linux-gnu/libc.so.6",
        "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
    ];
    host.extend_from_slice(more);
    let mut all = vec![
        Entry::Symlink("bin", "usr/bin"),
        Entry::Symlink("lib", "usr/lib"),
        Entry::Symlink("lib64", "usr/lib64"),
        Entry::Symlink("usr/bin/sh", "dash"),
        Entry::Dir("usr/lib64/", 0o755),
        Entry::Symlink(
            "usr/lib64/ld-linux-x86-64.so.2",
            "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        ),
    ];
    all.extend_from_slice(entries);
    tar_with_host_files(rootfs, &host, &all)
}

/// Push an image of one layer (`layer`, gzipped) with the run config `run` to `dest` in
/// `reg`, through an OCI layout written in `dir`.
pub fn push_layer(reg: &Registry, dir: &Path, layer: &[u8], run: serde_json::Value, dest: &str) {
    let mut layout = Layout::new(dir);
    layout.image("v1", &[(gzip(layer), LAYER_GZIP)], &[layer.to_vec()], run);
    reg.push(&layout.dir, "v1", dest, &[]);
}

/// Push a shell image ([`shell_layer`]) whose `/srv/hello.txt` holds `hello` to `dest`.
pub fn push_shell(reg: &Registry, dir: &Path, dest: &str, hello: &[u8]) {
    let layer = shell_layer(hello);
    push_layer(
        reg,
        dir,
        &layer,
        serde_json::json!({"Env": ["PATH=/usr/bin:/bin"]}),
        dest,
    );
}

pub const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// An OCI image layout written by hand: blobs by digest, manifests, index.json with tags.
pub struct Layout {
    pub dir: PathBuf,
    tags: Vec<serde_json::Value>,
}

impl Layout {
    pub fn new(dir: &Path) -> Layout {
        let _ = fs::remove_dir_all(dir);
        fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let l = Layout {
            dir: dir.to_path_buf(),
            tags: Vec::new(),
        };
        l.write_index();
        l
    }

    pub fn blob(&self, bytes: &[u8]) -> String {
        let d = sha256(bytes);
        fs::write(
            self.dir
                .join("blobs/sha256")
                .join(d.strip_prefix("sha256:").unwrap()),
            bytes,
        )
        .unwrap();
        d
    }

    fn write_index(&self) {
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": self.tags,
        });
        fs::write(self.dir.join("index.json"), index.to_string()).unwrap();
    }

    /// An image manifest for `arch` from (compressed layer bytes, media type) and the config's
    /// `config` object (Env, Cmd...); returns (manifest descriptor JSON, manifest digest).
    pub fn manifest(
        &self,
        arch: &str,
        layers: &[(Vec<u8>, &str)],
        diff_ids: &[Vec<u8>],
        run: serde_json::Value,
    ) -> (serde_json::Value, String) {
        let config = serde_json::json!({
            "architecture": arch,
            "os": "linux",
            "config": run,
            "rootfs": {"type": "layers", "diff_ids": diff_ids.iter().map(|d| sha256(d)).collect::<Vec<_>>()},
        })
        .to_string();
        let config_digest = self.blob(config.as_bytes());
        let layer_descs: Vec<serde_json::Value> = layers
            .iter()
            .map(|(bytes, mt)| {
                serde_json::json!({"mediaType": mt, "digest": self.blob(bytes), "size": bytes.len()})
            })
            .collect();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
            "layers": layer_descs,
        })
        .to_string();
        let digest = self.blob(manifest.as_bytes());
        let desc = serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest,
            "size": manifest.len(),
            "platform": {"architecture": arch, "os": "linux"},
        });
        (desc, digest)
    }

    /// Tag a descriptor (manifest or index) in index.json.
    pub fn tag(&mut self, tag: &str, desc: &serde_json::Value) {
        let mut d = desc.clone();
        d["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": tag});
        self.tags.push(d);
        self.write_index();
    }

    /// A single-platform amd64 image, tagged.
    pub fn image(
        &mut self,
        tag: &str,
        layers: &[(Vec<u8>, &str)],
        diff_ids: &[Vec<u8>],
        run: serde_json::Value,
    ) -> String {
        let (desc, digest) = self.manifest("amd64", layers, diff_ids, run);
        self.tag(tag, &desc);
        digest
    }

    /// A multi-platform index of manifest descriptors, tagged.
    pub fn index(&mut self, tag: &str, manifests: &[serde_json::Value]) -> String {
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        })
        .to_string();
        let digest = self.blob(index.as_bytes());
        self.tag(
            tag,
            &serde_json::json!({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": digest, "size": index.len()}),
        );
        digest
    }
}

/// A loopback HTTP proxy in front of a registry that cuts the connection in the middle of
/// the first `cuts` blob bodies larger than `min_body` it relays (`usize::MAX`: all of them);
/// it relays only half of each, so resumed downloads (Range) are cut again.
pub struct CuttingProxy {
    pub addr: String,
}

impl CuttingProxy {
    pub fn start(upstream: &str, cuts: usize, min_body: usize) -> CuttingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let upstream = upstream.to_string();
        std::thread::spawn(move || {
            let mut cut = 0;
            // Bounded: a test makes a handful of requests.
            for conn in listener.incoming().take(200) {
                let Ok(mut client) = conn else { continue };
                let Some(head) = read_head(&mut client) else {
                    continue;
                };
                let is_blob = head.lines().next().unwrap_or("").contains("/blobs/");
                // One request per connection: ask upstream to close, then relay what it says.
                let head = head.replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n");
                let Ok(mut up) = TcpStream::connect(&upstream) else {
                    continue;
                };
                if up.write_all(head.as_bytes()).is_err() {
                    continue;
                }
                let mut resp = Vec::new();
                let _ = up.read_to_end(&mut resp);
                let body_at = resp
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .map(|p| p + 4)
                    .unwrap_or(resp.len());
                let body_len = resp.len() - body_at;
                if is_blob && body_len > min_body && cut < cuts {
                    cut += 1;
                    resp.truncate(body_at + body_len / 2);
                }
                let _ = client.write_all(&resp);
            }
        });
        CuttingProxy { addr }
    }
}

fn read_head(s: &mut TcpStream) -> Option<String> {
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 65536 {
        if s.read(&mut byte).ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    String::from_utf8(head).ok()
}

/// A bearer-token front for a registry, as Docker Hub and most registries do it: every
/// registry request without `Authorization: Bearer <token>` gets 401 with a
/// `WWW-Authenticate: Bearer realm=".../token",service="berth-test",scope="repository:REPO:pull"`
/// challenge; `GET /token?service=..&scope=..` with the right basic credentials answers
/// `{"token": ...}`; requests with that token are relayed to the registry.
pub struct TokenProxy {
    pub addr: String,
    /// The query strings of the token requests that got a token (for assertions).
    pub issued: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

pub const TOKEN_SERVICE: &str = "berth-test";

impl TokenProxy {
    pub fn start(upstream: &str, user: &str, password: &str) -> TokenProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let basic = format!("Basic {}", base64(format!("{user}:{password}").as_bytes()));
        // Unguessable enough for a test, different per proxy.
        let token = format!(
            "tok-{}",
            &sha256(format!("{addr}{basic}").as_bytes())[7..31]
        );
        let issued = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (upstream, issued2, addr2) = (upstream.to_string(), issued.clone(), addr.clone());
        std::thread::spawn(move || {
            // Bounded: a test makes a few dozen requests.
            for conn in listener.incoming().take(500) {
                let Ok(client) = conn else { continue };
                let (upstream, basic, token, issued, addr) = (
                    upstream.clone(),
                    basic.clone(),
                    token.clone(),
                    issued2.clone(),
                    addr2.clone(),
                );
                std::thread::spawn(move || {
                    token_serve(client, &upstream, &basic, &token, &issued, &addr)
                });
            }
        });
        TokenProxy { addr, issued }
    }
}

fn token_serve(
    mut client: TcpStream,
    upstream: &str,
    basic: &str,
    token: &str,
    issued: &std::sync::Mutex<Vec<String>>,
    addr: &str,
) {
    let Some(head) = read_head(&mut client) else {
        return;
    };
    let target = head.split_whitespace().nth(1).unwrap_or("").to_string();
    let authorization = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("authorization")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    let reply = |client: &mut TcpStream, status: &str, extra: &str, body: &str| {
        let _ = write!(
            client,
            "HTTP/1.1 {status}\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    };
    if let Some(query) = target.strip_prefix("/token?") {
        if authorization == basic {
            issued.lock().unwrap().push(query.to_string());
            reply(
                &mut client,
                "200 OK",
                "",
                &format!(r#"{{"token":"{token}","expires_in":300}}"#),
            );
        } else {
            reply(&mut client, "401 Unauthorized", "", r#"{"errors":[]}"#);
        }
        return;
    }
    if authorization != format!("Bearer {token}") {
        // /v2/REPO/manifests/.. or /v2/REPO/blobs/..: the scope names the repository.
        let repo = target
            .strip_prefix("/v2/")
            .and_then(|t| t.rsplit_once("/manifests/").or(t.rsplit_once("/blobs/")))
            .map(|(r, _)| r.to_string())
            .unwrap_or_default();
        let challenge = format!(
            "WWW-Authenticate: Bearer realm=\"http://{addr}/token\",service=\"{TOKEN_SERVICE}\",scope=\"repository:{repo}:pull\"\r\n"
        );
        reply(
            &mut client,
            "401 Unauthorized",
            &challenge,
            r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#,
        );
        return;
    }
    // Relay: one request per connection, the registry told to close when done.
    let head = head.replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n");
    let Ok(mut up) = TcpStream::connect(upstream) else {
        return;
    };
    if up.write_all(head.as_bytes()).is_ok() {
        let _ = std::io::copy(&mut up, &mut client);
    }
}

/// Standard base64 with padding (for the basic credentials the token endpoint expects).
pub fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
