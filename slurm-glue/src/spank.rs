//! Safe accessors to Slurm's SPANK API: every unsafe call into Slurm (and the few libc calls
//! on Slurm's pointers) is here, behind functions that take and return owned Rust values.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::os::raw::{c_char, c_int};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::sync::OnceLock;

#[allow(
    non_upper_case_globals,
    non_camel_case_types,
    non_snake_case,
    dead_code
)]
pub(crate) mod ffi {
    include!(concat!(env!("OUT_DIR"), "/spank.rs"));
}

/// Slurm's handle for the current callback.
#[derive(Clone, Copy)]
pub struct Spank(pub ffi::spank_t);

/// The SPANK context the plugin runs in.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Context {
    /// srun, before the job step is created.
    Local,
    /// slurmstepd, in the job step (its tasks).
    Remote,
    /// sbatch and salloc.
    Allocator,
    Slurmd,
    /// The job prolog and epilog.
    JobScript,
    Other,
}

pub fn context() -> Context {
    match unsafe { ffi::spank_context() } {
        ffi::spank_context_S_CTX_LOCAL => Context::Local,
        ffi::spank_context_S_CTX_REMOTE => Context::Remote,
        ffi::spank_context_S_CTX_ALLOCATOR => Context::Allocator,
        ffi::spank_context_S_CTX_SLURMD => Context::Slurmd,
        ffi::spank_context_S_CTX_JOB_SCRIPT => Context::JobScript,
        _ => Context::Other,
    }
}

/// ESPANK_SUCCESS is 0.
fn ok(rc: ffi::spank_err_t) -> bool {
    rc as i64 == 0
}

/// A C argument vector (plugstack arguments), lossily as text.
///
/// # Safety
/// `av` holds `ac` valid C strings (or null pointers).
pub unsafe fn args(ac: c_int, av: *mut *mut c_char) -> Vec<String> {
    unsafe { os_args(ac, av) }
        .into_iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect()
}

/// A C argument vector as bytes (a task's argv need not be UTF-8).
///
/// # Safety
/// `av` holds `ac` valid C strings (or null pointers).
unsafe fn os_args(ac: c_int, av: *mut *mut c_char) -> Vec<OsString> {
    (0..ac.max(0) as isize)
        .filter_map(|i| unsafe {
            let p = *av.offset(i);
            (!p.is_null()).then(|| OsString::from_vec(CStr::from_ptr(p).to_bytes().to_vec()))
        })
        .collect()
}

/// The options srun, sbatch and salloc saw on their command line (option number, argument),
/// recorded as they parse them: `spank_option_getopt` does not answer for them there yet
/// when the options are checked.
static SEEN: std::sync::Mutex<Vec<(usize, String)>> = std::sync::Mutex::new(Vec::new());

/// Slurm's callback for each of berth's options it parses.
unsafe extern "C" fn option_seen(val: c_int, optarg: *const c_char, _remote: c_int) -> c_int {
    let arg = if optarg.is_null() {
        String::new()
    } else {
        unsafe { CStr::from_ptr(optarg) }
            .to_string_lossy()
            .into_owned()
    };
    if let Ok(mut seen) = SEEN.lock() {
        seen.push((val as usize, arg));
    }
    0
}

/// The registered option structs, kept for the life of the process (Slurm keeps pointers).
fn options() -> &'static Vec<usize> {
    static OPTS: OnceLock<Vec<usize>> = OnceLock::new();
    OPTS.get_or_init(|| {
        crate::args::OPTIONS
            .iter()
            .enumerate()
            .map(|(i, (name, arg, usage))| {
                let leak = |s: &str| CString::new(s).unwrap().into_raw();
                let opt = Box::new(ffi::spank_option {
                    name: leak(name),
                    arginfo: arg.map_or(std::ptr::null_mut(), leak),
                    usage: leak(usage),
                    has_arg: arg.is_some() as c_int,
                    val: i as c_int,
                    cb: Some(option_seen),
                });
                Box::into_raw(opt) as usize
            })
            .collect()
    })
}

impl Spank {
    /// Register berth's options (srun's, sbatch's and salloc's `--help` lists them).
    pub fn register_options(self) {
        for opt in options() {
            unsafe { ffi::spank_option_register(self.0, *opt as *mut ffi::spank_option) };
        }
    }

    /// The value of option number `i` of [`crate::args::OPTIONS`], if the user gave it
    /// (an empty string for a flag without argument).
    pub fn option(self, i: usize) -> Option<String> {
        let mut optarg: *mut c_char = std::ptr::null_mut();
        let rc = unsafe {
            ffi::spank_option_getopt(self.0, options()[i] as *mut ffi::spank_option, &mut optarg)
        };
        if !ok(rc) {
            let seen = SEEN.lock().ok()?;
            return seen
                .iter()
                .rev()
                .find(|(v, _)| *v == i)
                .map(|(_, a)| a.clone());
        }
        ok(rc).then(|| {
            if optarg.is_null() {
                String::new()
            } else {
                unsafe { CStr::from_ptr(optarg) }
                    .to_string_lossy()
                    .into_owned()
            }
        })
    }

    /// A variable of the job's environment (remote context) or of this process (others).
    pub fn getenv(self, name: &str, remote: bool) -> Option<String> {
        if !remote {
            return std::env::var(name).ok();
        }
        let mut buf = vec![0u8; 4096];
        let cname = CString::new(name).ok()?;
        let rc = unsafe {
            ffi::spank_getenv(
                self.0,
                cname.as_ptr(),
                buf.as_mut_ptr() as *mut c_char,
                buf.len() as c_int,
            )
        };
        ok(rc).then(|| {
            unsafe { CStr::from_ptr(buf.as_ptr() as *const c_char) }
                .to_string_lossy()
                .into_owned()
        })
    }

    fn get_u32(self, item: ffi::spank_item_t) -> u32 {
        let mut v: u32 = 0;
        unsafe { ffi::spank_get_item(self.0, item, &mut v as *mut u32) };
        v
    }

    pub fn job_id(self) -> u32 {
        self.get_u32(ffi::spank_item_S_JOB_ID)
    }

    pub fn step_id(self) -> u32 {
        self.get_u32(ffi::spank_item_S_JOB_STEPID)
    }

    /// How many of the step's tasks run on this node.
    pub fn local_task_count(self) -> u32 {
        self.get_u32(ffi::spank_item_S_JOB_LOCAL_TASK_COUNT)
    }

    pub fn job_uid(self) -> u32 {
        self.get_u32(ffi::spank_item_S_JOB_UID)
    }

    pub fn job_gid(self) -> u32 {
        self.get_u32(ffi::spank_item_S_JOB_GID)
    }

    /// The job's environment (what Slurm will exec the task with), as pairs of bytes.
    pub fn job_env(self) -> Vec<(OsString, OsString)> {
        let mut envp: *mut *mut c_char = std::ptr::null_mut();
        let rc = unsafe {
            ffi::spank_get_item(
                self.0,
                ffi::spank_item_S_JOB_ENV,
                &mut envp as *mut *mut *mut c_char,
            )
        };
        let mut out = Vec::new();
        if !ok(rc) || envp.is_null() {
            return out;
        }
        let mut i = 0;
        loop {
            let p = unsafe { *envp.offset(i) };
            if p.is_null() {
                break;
            }
            let kv = unsafe { CStr::from_ptr(p) }.to_bytes();
            if let Some(eq) = kv.iter().position(|b| *b == b'=') {
                out.push((
                    OsStr::from_bytes(&kv[..eq]).into(),
                    OsStr::from_bytes(&kv[eq + 1..]).into(),
                ));
            }
            i += 1;
        }
        out
    }

    /// Slurm's own argv array for the task (the one it will exec), with its length.
    fn raw_job_argv(self) -> Option<(c_int, *mut *mut c_char)> {
        let mut argc: c_int = 0;
        let mut argv: *mut *mut c_char = std::ptr::null_mut();
        let rc = unsafe {
            ffi::spank_get_item(
                self.0,
                ffi::spank_item_S_JOB_ARGV,
                &mut argc as *mut c_int,
                &mut argv as *mut *mut *mut c_char,
            )
        };
        (ok(rc) && !argv.is_null()).then_some((argc, argv))
    }

    /// The task's command (`true` when Slurm gives none).
    pub fn job_argv(self) -> Vec<OsString> {
        let Some((argc, argv)) = self.raw_job_argv() else {
            return vec!["true".into()];
        };
        let v = unsafe { os_args(argc, argv) };
        if v.is_empty() {
            vec!["true".into()]
        } else {
            v
        }
    }

    /// Replace the task's argv[0] (the program Slurm execs); false if the task has no argv.
    pub fn set_argv0(self, program: &str) -> bool {
        let Some((_, argv)) = self.raw_job_argv().filter(|(argc, _)| *argc >= 1) else {
            return false;
        };
        // Leaked on purpose: Slurm execs with this pointer in its argv.
        let shim = CString::new(program).unwrap_or_default();
        unsafe { *argv = shim.into_raw() };
        true
    }

    /// Set a variable of the task's environment (bytes without NUL are skipped).
    pub fn setenv(self, k: &OsStr, v: &OsStr) {
        let (k, v) = (CString::new(k.as_bytes()), CString::new(v.as_bytes()));
        if let (Ok(k), Ok(v)) = (k, v) {
            unsafe { ffi::spank_setenv(self.0, k.as_ptr(), v.as_ptr(), 1) };
        }
    }

    pub fn unsetenv(self, k: &OsStr) {
        if let Ok(k) = CString::new(k.as_bytes()) {
            unsafe { ffi::spank_unsetenv(self.0, k.as_ptr()) };
        }
    }
}

/// This plugin's file, as the dynamic loader found it.
pub fn own_path() -> Option<PathBuf> {
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    let addr = own_path as *const libc::c_void;
    if unsafe { libc::dladdr(addr, &mut info) } == 0 || info.dli_fname.is_null() {
        return None;
    }
    let name = unsafe { CStr::from_ptr(info.dli_fname) }.to_string_lossy();
    std::fs::canonicalize(name.as_ref()).ok()
}

/// Slurm's log levels berth uses.
#[derive(Clone, Copy)]
pub enum Level {
    Error,
    Info,
    Verbose,
    Debug,
}

/// A line in Slurm's log: srun's stderr (by its `-v` count) in srun, sbatch and salloc; the
/// slurmd log (and srun's stderr at its `--slurmd-debug` level) in slurmstepd.
pub fn log(level: Level, msg: &str) {
    let Ok(msg) = CString::new(msg.replace('\0', " ")) else {
        return;
    };
    let fmt = c"berth: %s".as_ptr();
    unsafe {
        match level {
            Level::Error => ffi::slurm_error(fmt, msg.as_ptr()),
            Level::Info => ffi::slurm_info(fmt, msg.as_ptr()),
            Level::Verbose => ffi::slurm_verbose(fmt, msg.as_ptr()),
            Level::Debug => ffi::slurm_debug(fmt, msg.as_ptr()),
        }
    }
}
