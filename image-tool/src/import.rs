//! `berth-image import`: plan (resolve the source to a config and an ordered list of verified
//! layers; here), fetch (registry layers into the cache; [`crate::fetch`]), then assemble
//! (merge the layers and write the squashfs with its image config; [`crate::assemble`]).

pub(crate) use crate::assemble::make_work_dir;
use crate::assemble::{assemble, mksquashfs, sweep_stale_temps};
use crate::cache::Cache;
use crate::fetch::{open_loc, Layer, Loc};
use crate::oci::{self, ConfigBlob, Document};
use crate::progress::Progress;
use crate::registry::Client;
use crate::source::{RegistryRef, Source};
use berth_image_config::{ImageConfig, CONFIG_PATH};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub struct Options {
    pub source: Source,
    pub source_text: String,
    pub output: PathBuf,
    pub platform: Option<String>,
    pub comp: String,
    pub level: Option<u32>,
    pub insecure: bool,
    pub cache_dir: Option<PathBuf>,
    pub quiet: bool,
    /// Rebuild even if the output already holds this very image.
    pub force: bool,
    /// Refuse layers whose files add up to more than this many bytes (holes included).
    pub max_size: u64,
    /// Import into the image store instead of `output` (which is then ignored).
    pub store: Option<crate::store::Stores>,
    /// The job whose steps must all get the digest its first step resolved (with `store`).
    pub job: Option<String>,
    /// How the image is put together (streamed, or the old unpack + mksquashfs).
    pub assemble: crate::assemble::Method,
}

/// What an import did (printed as JSON with `--json`).
#[derive(Debug, serde::Serialize)]
pub struct Summary {
    pub output: PathBuf,
    pub size: u64,
    pub source: String,
    pub manifest_digest: Option<String>,
    pub layers: Vec<LayerSummary>,
    pub warnings: Vec<String>,
    /// The output already held this image (same config, manifest, layers and squashfs
    /// settings): nothing was downloaded or rebuilt.
    pub up_to_date: bool,
    /// With the store: the digest the reference resolved to (the job's pin).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

impl Summary {
    /// An image just built at `opts.output`, not one found up to date there.
    pub(crate) fn built(
        opts: &Options,
        size: u64,
        manifest_digest: Option<String>,
        layers: Vec<LayerSummary>,
        warnings: Vec<String>,
    ) -> Summary {
        Summary {
            output: opts.output.clone(),
            size,
            source: opts.source_text.clone(),
            manifest_digest,
            layers,
            warnings,
            up_to_date: false,
            digest: None,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct LayerSummary {
    pub digest: String,
    pub size: u64,
    pub cached: bool,
    pub entries: u64,
}

/// The plan: everything needed to assemble, nothing written yet except the layer cache.
pub(crate) struct Plan {
    pub config: ImageConfig,
    pub layers: Vec<Layer>,
    pub manifest_digest: Option<String>,
    /// The output already holds exactly this image; layers were not fetched.
    pub up_to_date: bool,
}

pub(crate) fn mib(n: u64) -> String {
    format!("{:.1} MiB", n as f64 / (1024.0 * 1024.0))
}

/// Refuse outputs we cannot write before doing any work.
fn check_output(out: &Path) -> Result<PathBuf, String> {
    let name = out
        .file_name()
        .ok_or_else(|| format!("output '{}' is not a file name", out.display()))?;
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(format!(
            "output directory {} does not exist; create it first",
            dir.display()
        ));
    }
    if out.is_dir() {
        return Err(format!(
            "output {} is a directory; give a file name such as IMG.sqsh",
            out.display()
        ));
    }
    // Host and a random part besides the pid: PIDs repeat across the nodes that share a
    // directory; mkdir of the work directory is exclusive.
    Ok(dir.join(format!(
        ".{}.berth-tmp-{}-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        crate::store::random(),
        crate::store::hostname()
    )))
}

pub fn import(opts: &Options) -> Result<Summary, String> {
    if let Some(stores) = &opts.store {
        return import_to_store(opts, stores);
    }
    let work_path = check_output(&opts.output)?;
    sweep_stale_temps(&work_path);
    let (level, comp) = compression(opts)?;
    let progress = Progress::new(opts.quiet);
    if let Source::Rootfs(dir) = &opts.source {
        return import_rootfs(opts, &progress, dir, &work_path, &comp, level);
    }
    if let Source::Sif(file) = &opts.source {
        return crate::sif::import(opts, &progress, file, &work_path);
    }
    let plan = match &opts.source {
        Source::Registry(r) => plan_registry(opts, &progress, r)?,
        Source::OciDir { dir, tag } => plan_oci(&Store::dir(dir)?, tag.as_deref(), opts)?,
        Source::OciArchive { file, tag } => plan_oci(&Store::tar(file)?, tag.as_deref(), opts)?,
        Source::DockerArchive { file } => plan_docker_archive(file, opts)?,
        Source::Rootfs(_) | Source::Sif(_) => unreachable!("handled above"),
    };
    if plan.up_to_date {
        return Ok(Summary {
            output: opts.output.clone(),
            size: std::fs::metadata(&opts.output)
                .map(|m| m.len())
                .unwrap_or(0),
            source: opts.source_text.clone(),
            manifest_digest: plan.manifest_digest,
            layers: plan
                .layers
                .iter()
                .map(|l| LayerSummary {
                    digest: l.digest.clone(),
                    size: l.size,
                    cached: l.cached,
                    entries: 0,
                })
                .collect(),
            warnings: Vec::new(),
            up_to_date: true,
            digest: None,
        });
    }
    assemble(opts, &progress, plan, &work_path, &comp, level)
}

/// The platform an import picks when none is given.
fn platform_text(opts: &Options) -> String {
    opts.platform
        .clone()
        .unwrap_or_else(|| format!("linux/{}", std::env::consts::ARCH))
}

/// Import a registry image into the store, once: the reference resolves to a digest (from the
/// reference itself, the job's record or one manifest request); an image in the site or user
/// store is checked and used; else one importer claims it and the others wait for it.
fn import_to_store(opts: &Options, stores: &crate::store::Stores) -> Result<Summary, String> {
    use crate::store;
    let Source::Registry(r) = &opts.source else {
        return Err(
            "the image store takes registry images (docker://...); import other sources with -o FILE"
                .into(),
        );
    };
    let (level, comp) = compression(opts)?;
    let settings = squashfs_settings(opts);
    let platform = platform_text(opts);
    let pinned = r.digest.clone().or_else(|| {
        opts.job
            .as_deref()
            .and_then(|j| store::job_digest(&stores.user, j, &opts.source_text))
    });
    let mut resolved = None;
    let mut digest = match pinned {
        Some(d) => d,
        None => {
            let client = Client::new(r, opts.insecure)?;
            let (_, d, doc) = client.manifest(r.reference())?;
            resolved = Some((client, d.clone(), doc));
            d
        }
    };
    if let (Some(job), None) = (&opts.job, &r.digest) {
        stores.create()?;
        let first = store::pin_job(&stores.user, job, &opts.source_text, &digest)?;
        if first != digest {
            (digest, resolved) = (first, None);
        }
    }
    let key = store::key(&digest, &platform, &settings);
    let done = |f: store::Found, up_to_date: bool| -> Result<Summary, String> {
        store::verify(&f)?;
        Ok(Summary {
            output: f.path,
            size: f.meta.size,
            source: opts.source_text.clone(),
            manifest_digest: Some(f.meta.manifest_digest),
            layers: Vec::new(),
            warnings: Vec::new(),
            up_to_date,
            digest: Some(f.meta.digest),
        })
    };
    if let Some(f) = stores.find(&key) {
        return done(f, true);
    }
    stores.create()?;
    let claim = match store::claim_or_wait(stores, &key, opts.quiet)? {
        Ok(f) => return done(f, true),
        Err(claim) => claim,
    };
    let (client, top, doc) = match resolved {
        Some(x) => x,
        None => {
            let client = Client::new(r, opts.insecure)?;
            let (_, d, doc) = client.manifest(&digest)?;
            (client, d, doc)
        }
    };
    let sub = Options {
        source: opts.source.clone(),
        source_text: opts.source_text.clone(),
        output: stores.user.join(format!("{key}.sqsh")),
        platform: opts.platform.clone(),
        comp: opts.comp.clone(),
        level: opts.level,
        insecure: opts.insecure,
        cache_dir: opts.cache_dir.clone(),
        quiet: opts.quiet,
        force: true,
        max_size: opts.max_size,
        store: None,
        job: None,
        assemble: opts.assemble,
    };
    let work_path = check_output(&sub.output)?;
    sweep_stale_temps(&work_path);
    let progress = Progress::new(opts.quiet);
    let plan = plan_resolved(&sub, &progress, r, &client, top.clone(), doc)?;
    let manifest_digest = plan.manifest_digest.clone().unwrap_or_else(|| top.clone());
    let summary = assemble(&sub, &progress, plan, &work_path, &comp, level)?;
    let meta = store::Meta {
        reference: format!("docker://{}", r.display()),
        digest: top,
        manifest_digest,
        platform,
        squashfs: settings,
        size: 0,
        sha256: String::new(),
        imported_at: 0,
        imported_by: String::new(),
        host: String::new(),
        identity: String::new(),
    };
    let found = store::commit(&stores.user, &key, meta)?;
    drop(claim);
    Ok(Summary {
        output: found.path,
        size: found.meta.size,
        manifest_digest: Some(found.meta.manifest_digest),
        digest: Some(found.meta.digest),
        ..summary
    })
}

/// How the squashfs is built, recorded in the image config (`source.squashfs`): an output is
/// up to date only if it was built the same way.
fn squashfs_settings(opts: &Options) -> String {
    match compression(opts) {
        Ok((Some(l), comp)) => format!("{comp} level {l}"),
        _ => opts.comp.clone(),
    }
}

/// Does the output already hold exactly this image? Its config (`/.berth/image.json`) records
/// the manifest and config digests, every layer digest and the squashfs settings, so equal
/// configs mean an equal image. Anything unreadable means "no": the import then rebuilds.
fn output_holds(opts: &Options, config: &ImageConfig) -> bool {
    if opts.force || !std::fs::metadata(&opts.output).is_ok_and(|m| m.is_file()) {
        return false;
    }
    let out = Command::new("unsquashfs")
        .arg("-cat")
        .arg(&opts.output)
        .arg(CONFIG_PATH)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => ImageConfig::parse(&String::from_utf8_lossy(&o.stdout))
            .is_ok_and(|existing| &existing == config),
        _ => false,
    }
}

fn compression(opts: &Options) -> Result<(Option<u32>, String), String> {
    let range = match opts.comp.as_str() {
        "zstd" => Some(1..=22),
        "gzip" => Some(1..=9),
        "xz" | "lzo" | "lz4" => None,
        other => {
            return Err(format!(
                "unknown compression '{other}'; use zstd, gzip, xz, lzo or lz4"
            ))
        }
    };
    match (opts.level, range) {
        (Some(l), Some(r)) if !r.contains(&l) => Err(format!(
            "--level {l} is out of range for {} ({}..={})",
            opts.comp,
            r.start(),
            r.end()
        )),
        (Some(_), None) => Err(format!("--level is not supported for {}", opts.comp)),
        (None, _) if opts.comp == "zstd" => Ok((Some(ZSTD_DEFAULT_LEVEL), opts.comp.clone())),
        (l, _) => Ok((l, opts.comp.clone())),
    }
}

/// zstd's own default level. mksquashfs defaults to 15, which costs ~13x the CPU time for
/// images ~12% smaller (measured on the demo image: 0.75 s vs 9.3 s on 2 cores); decompression,
/// what every run pays, is as fast at either level. `--level 15` gives mksquashfs's choice.
pub const ZSTD_DEFAULT_LEVEL: u32 = 3;

/// mksquashfs's memory budget (its default is a quarter of the RAM: 300 MiB peak on the demo
/// image); 128 MiB costs no speed on 2 cores and keeps an import's peak RSS near 100 MiB.
pub(crate) const MKSQUASHFS_MEM: &str = "128M";

fn open_cache(opts: &Options) -> Result<Cache, String> {
    let dir = match &opts.cache_dir {
        Some(d) => d.clone(),
        None => crate::cache::default_dir()?,
    };
    Cache::open(dir)
}

fn runtime_config(config: &ConfigBlob, source: BTreeMap<String, String>) -> ImageConfig {
    ImageConfig {
        schema_version: 1,
        config: config.runtime(),
        source,
    }
}

fn plan_registry(opts: &Options, progress: &Progress, r: &RegistryRef) -> Result<Plan, String> {
    let client = Client::new(r, opts.insecure)?;
    let (_, digest, doc) = client.manifest(r.reference())?;
    plan_resolved(opts, progress, r, &client, digest, doc)
}

/// The plan of a registry image whose manifest (or index) was fetched already.
fn plan_resolved(
    opts: &Options,
    progress: &Progress,
    r: &RegistryRef,
    client: &Client,
    mut digest: String,
    mut doc: Document,
) -> Result<Plan, String> {
    let cache = open_cache(opts)?;
    let want = oci::wanted_platform(opts.platform.as_deref())?;
    let mut platform = None;
    if doc.is_index() {
        let d = oci::select_platform(&doc, &want)?.clone();
        oci::check_digest(&d.digest)?;
        let (_, d2, doc2) = client.manifest(&d.digest)?;
        if doc2.is_index() {
            return Err(format!(
                "{} is an index inside an index; not supported",
                d.digest
            ));
        }
        platform = d.platform.as_ref().map(oci::Platform::describe);
        (digest, doc) = (d2, doc2);
    }
    let cdesc = doc
        .config
        .clone()
        .ok_or_else(|| format!("manifest {digest} has no config"))?;
    let config = ConfigBlob::parse(&client.small_blob(&cdesc.digest)?)?;
    check_layer_media_types(&doc)?;
    let diff_ids = layer_diff_ids(&config, doc.layers.len());
    let mut source = BTreeMap::new();
    source.insert("reference".into(), format!("docker://{}", r.display()));
    source.insert("manifest_digest".into(), digest.clone());
    source.insert("config_digest".into(), cdesc.digest.clone());
    if let Some(p) = platform {
        source.insert("platform".into(), p);
    }
    let digests: Vec<&str> = doc.layers.iter().map(|l| l.digest.as_str()).collect();
    source.insert("layers".into(), digests.join(" "));
    source.insert("squashfs".into(), squashfs_settings(opts));
    let config = runtime_config(&config, source);
    if output_holds(opts, &config) {
        let mut layers = Vec::new();
        for (l, diff_id) in doc.layers.iter().zip(diff_ids) {
            let path = cache.blob_path(&l.digest)?;
            layers.push(Layer {
                digest: l.digest.clone(),
                diff_id,
                size: l.size,
                cached: path.is_file(),
                loc: Loc::Cache(path),
            });
        }
        return Ok(Plan {
            config,
            layers,
            manifest_digest: Some(digest),
            up_to_date: true,
        });
    }

    let layers = crate::fetch::fetch_layers(
        progress,
        client,
        &cache,
        &doc.layers,
        &diff_ids,
        opts.max_size,
    )?;
    Ok(Plan {
        config,
        layers,
        manifest_digest: Some(digest),
        up_to_date: false,
    })
}

/// The config's diff_id of each layer, where the config lists one per layer (a malformed one
/// is left out: it only names the layer's decoded copy in the cache).
fn layer_diff_ids(config: &ConfigBlob, layers: usize) -> Vec<Option<String>> {
    let listed = config.rootfs.clone().unwrap_or_default().diff_ids;
    if listed.len() != layers {
        return vec![None; layers];
    }
    listed
        .into_iter()
        .map(|d| oci::check_digest(&d).is_ok().then_some(d))
        .collect()
}

pub(crate) fn short(d: &str) -> &str {
    &d[..d.len().min(19)]
}

fn layer_list(layers: &[Layer]) -> String {
    layers
        .iter()
        .map(|l| l.digest.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

fn check_layer_media_types(doc: &Document) -> Result<(), String> {
    for l in &doc.layers {
        oci::check_digest(&l.digest)?;
        let mt = l.media_type.as_str();
        let ok = mt.is_empty()
            || mt.contains("tar")
            || mt == "application/vnd.docker.image.rootfs.diff.tar.gzip"
            || mt == "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
        if !ok {
            return Err(format!(
                "layer {} has media type {mt}, which is not a filesystem layer",
                l.digest
            ));
        }
    }
    Ok(())
}

/// The files of an OCI layout or docker archive: a directory, or members of a tar file.
enum Store {
    Dir(PathBuf),
    Tar {
        file: PathBuf,
        members: HashMap<String, (u64, u64)>,
    },
}

impl Store {
    fn dir(dir: &Path) -> Result<Store, String> {
        if !dir.join("index.json").is_file() {
            return Err(format!(
                "{} is not an OCI image layout (no index.json)",
                dir.display()
            ));
        }
        Ok(Store::Dir(dir.to_path_buf()))
    }

    /// Index the members of a tar file (names -> data offset and size); the data is read later.
    fn tar(file: &Path) -> Result<Store, String> {
        let f = File::open(file).map_err(|e| format!("cannot open {}: {e}", file.display()))?;
        let not_tar =
            |e: &dyn std::fmt::Display| format!("{} is not a tar archive ({e})", file.display());
        let mut archive = tar::Archive::new(BufReader::new(f));
        let mut members = HashMap::new();
        for entry in archive.entries().map_err(|e| not_tar(&e))? {
            let entry = entry.map_err(|e| not_tar(&e))?;
            if entry.header().entry_type().is_file() {
                let name = entry.path().map_err(|e| not_tar(&e))?;
                let name = name.to_string_lossy().trim_start_matches("./").to_string();
                members.insert(name, (entry.raw_file_position(), entry.size()));
            }
        }
        if members.is_empty() {
            return Err(not_tar(&"no files in it"));
        }
        Ok(Store::Tar {
            file: file.to_path_buf(),
            members,
        })
    }

    fn describe(&self) -> String {
        match self {
            Store::Dir(d) => d.display().to_string(),
            Store::Tar { file, .. } => file.display().to_string(),
        }
    }

    fn locate(&self, name: &str) -> Result<Loc, String> {
        match self {
            Store::Dir(d) => {
                let p = d.join(name);
                let len = std::fs::metadata(&p)
                    .map_err(|e| format!("{} in {}: {e}", name, d.display()))?
                    .len();
                Ok(Loc::Slice {
                    file: p,
                    offset: 0,
                    len,
                })
            }
            Store::Tar { file, members } => {
                let (offset, len) = members
                    .get(name)
                    .ok_or_else(|| format!("{} has no {name}", file.display()))?;
                Ok(Loc::Slice {
                    file: file.clone(),
                    offset: *offset,
                    len: *len,
                })
            }
        }
    }

    fn read(&self, name: &str) -> Result<Vec<u8>, String> {
        let loc = self.locate(name)?;
        if let Loc::Slice { len, .. } = &loc {
            if *len > 8 << 20 {
                return Err(format!(
                    "{name} in {} is too large for a manifest or config",
                    self.describe()
                ));
            }
        }
        let mut buf = Vec::new();
        open_loc(&loc)?
            .read_to_end(&mut buf)
            .map_err(|e| format!("cannot read {name} in {}: {e}", self.describe()))?;
        Ok(buf)
    }

    fn blob(&self, digest: &str) -> Result<Vec<u8>, String> {
        let hex = oci::check_digest(digest)?;
        let bytes = self.read(&format!("blobs/sha256/{hex}"))?;
        oci::verify_bytes(&bytes, digest, "blob")?;
        Ok(bytes)
    }
}

fn plan_oci(store: &Store, tag: Option<&str>, opts: &Options) -> Result<Plan, String> {
    // The source as the user wrote it, less the tag: an OCI layout is a directory or a tar file.
    let what = match store {
        Store::Dir(_) => format!("oci:{}", store.describe()),
        Store::Tar { .. } => format!("oci-archive:{}", store.describe()),
    };
    let index = Document::parse(&store.read("index.json")?, &format!("{what} index.json"))?;
    let desc = match tag {
        Some(t) => index
            .manifests
            .iter()
            .find(|d| {
                d.annotations
                    .get("org.opencontainers.image.ref.name")
                    .map(String::as_str)
                    == Some(t)
            })
            .ok_or_else(|| format!("{what} has no image tagged '{t}'"))?,
        None if index.manifests.len() == 1 => &index.manifests[0],
        None => {
            return Err(format!(
                "{what} holds {} images; name one as {what}:TAG",
                index.manifests.len()
            ))
        }
    };
    let mut digest = desc.digest.clone();
    let mut doc = Document::parse(&store.blob(&digest)?, &digest)?;
    let mut platform = None;
    if doc.is_index() {
        let want = oci::wanted_platform(opts.platform.as_deref())?;
        let d = oci::select_platform(&doc, &want)?.clone();
        platform = d.platform.as_ref().map(oci::Platform::describe);
        digest = d.digest.clone();
        doc = Document::parse(&store.blob(&digest)?, &digest)?;
    }
    let cdesc = doc
        .config
        .clone()
        .ok_or_else(|| format!("manifest {digest} has no config"))?;
    let config = ConfigBlob::parse(&store.blob(&cdesc.digest)?)?;
    check_layer_media_types(&doc)?;
    let mut layers = Vec::new();
    for l in &doc.layers {
        let hex = oci::check_digest(&l.digest)?;
        layers.push(Layer {
            digest: l.digest.clone(),
            diff_id: None,
            size: l.size,
            loc: store.locate(&format!("blobs/sha256/{hex}"))?,
            cached: false,
        });
    }
    let mut source = BTreeMap::new();
    source.insert(
        "reference".into(),
        match tag {
            Some(t) => format!("{what}:{t}"),
            None => what,
        },
    );
    source.insert("manifest_digest".into(), digest.clone());
    if let Some(p) = platform {
        source.insert("platform".into(), p);
    }
    source.insert("layers".into(), layer_list(&layers));
    source.insert("squashfs".into(), squashfs_settings(opts));
    let config = runtime_config(&config, source);
    let up_to_date = output_holds(opts, &config);
    Ok(Plan {
        config,
        layers,
        manifest_digest: Some(digest),
        up_to_date,
    })
}

/// `docker save` output: manifest.json names the config and the layers (uncompressed tars,
/// verified against the config's diff_ids).
fn plan_docker_archive(file: &Path, opts: &Options) -> Result<Plan, String> {
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(rename = "Config")]
        config: String,
        #[serde(rename = "Layers")]
        layers: Vec<String>,
        #[serde(rename = "RepoTags", default)]
        repo_tags: Option<Vec<String>>,
    }
    let store = Store::tar(file)?;
    let what = format!("docker-archive:{}", file.display());
    let manifest = store.read("manifest.json").map_err(|_| {
        format!(
            "{} is not a docker-archive (no manifest.json); make one with docker save",
            file.display()
        )
    })?;
    let entries: Vec<Entry> = serde_json::from_slice(&manifest)
        .map_err(|e| format!("{what}: manifest.json is invalid: {e}"))?;
    let entry = match entries.as_slice() {
        [one] => one,
        _ => {
            return Err(format!(
                "{what} holds {} images; save one image per archive",
                entries.len()
            ))
        }
    };
    let config_bytes = store.read(&entry.config)?;
    // The config is named by its digest (`<hex>.json` or `blobs/sha256/<hex>`).
    let config_digest = oci::sha256_digest(&config_bytes);
    let named = entry
        .config
        .trim_end_matches(".json")
        .rsplit('/')
        .next()
        .unwrap_or("");
    if format!("sha256:{named}") != config_digest {
        return Err(format!(
            "{what}: config {} failed verification: its content has digest {config_digest}",
            entry.config
        ));
    }
    let config = ConfigBlob::parse(&config_bytes)?;
    let diff_ids = config.rootfs.clone().unwrap_or_default().diff_ids;
    if diff_ids.len() != entry.layers.len() {
        return Err(format!(
            "{what}: {} layers but the config lists {} diff_ids",
            entry.layers.len(),
            diff_ids.len()
        ));
    }
    let mut layers = Vec::new();
    for (name, diff_id) in entry.layers.iter().zip(&diff_ids) {
        oci::check_digest(diff_id)?;
        let loc = store.locate(name)?;
        let size = match &loc {
            Loc::Slice { len, .. } => *len,
            Loc::Cache(_) => 0,
        };
        layers.push(Layer {
            digest: diff_id.clone(),
            diff_id: None,
            size,
            loc,
            cached: false,
        });
    }
    let mut source = BTreeMap::new();
    source.insert("reference".into(), what);
    source.insert("config_digest".into(), config_digest);
    if let Some(t) = entry.repo_tags.as_ref().and_then(|t| t.first()) {
        source.insert("tag".into(), t.clone());
    }
    source.insert("layers".into(), layer_list(&layers));
    source.insert("squashfs".into(), squashfs_settings(opts));
    let config = runtime_config(&config, source);
    let up_to_date = output_holds(opts, &config);
    Ok(Plan {
        config,
        layers,
        manifest_digest: None,
        up_to_date,
    })
}

/// A rootfs directory as is; the image config is added (as a pseudo file) unless it has one.
fn import_rootfs(
    opts: &Options,
    progress: &Progress,
    dir: &Path,
    work_path: &Path,
    comp: &str,
    level: Option<u32>,
) -> Result<Summary, String> {
    if !dir.is_dir() {
        return Err(format!("{} is not a directory (a rootfs to import); for images use docker://, oci:, docker-archive:", dir.display()));
    }
    let (work, _owner) = make_work_dir(work_path)?;
    let mut pseudo = Vec::new();
    if std::fs::symlink_metadata(dir.join(CONFIG_PATH)).is_err()
        && std::fs::symlink_metadata(dir.join(".berth")).is_err()
    {
        let mut source = BTreeMap::new();
        source.insert("reference".into(), format!("dir:{}", dir.display()));
        source.insert("squashfs".into(), squashfs_settings(opts));
        let config = ImageConfig {
            schema_version: 1,
            config: Default::default(),
            source,
        };
        let cfg = work.path().join("image.json");
        std::fs::write(&cfg, config.to_json())
            .map_err(|e| format!("cannot write {}: {e}", cfg.display()))?;
        let pf = work.path().join("pseudo");
        // Pseudo definitions: the file content comes from `cat` of our temp copy.
        std::fs::write(
            &pf,
            format!(
                ".berth d 755 0 0\n{CONFIG_PATH} f 644 0 0 cat {}\n",
                cfg.display()
            ),
        )
        .map_err(|e| format!("cannot write {}: {e}", pf.display()))?;
        pseudo = vec!["-pf".to_string(), pf.to_string_lossy().into_owned()];
    }
    let size = mksquashfs(opts, progress, dir, &pseudo, work.path(), comp, level)?;
    Ok(Summary::built(opts, size, None, Vec::new(), Vec::new()))
}
