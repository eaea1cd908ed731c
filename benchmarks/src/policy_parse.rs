//! What reading the site policy costs as it grows: `Policy::load` of a generated policy with
//! 100 and with 10,000 site mounts (every rank reads the policy), in process, so the figure
//! is the parser's and not a process start-up. Linear parsing and merging means the same
//! cost per mount at both sizes. Target: 10,000 mounts in under 100 ms.

use crate::stats::{verdict, Summary};
use berth_launcher::Policy;
use std::path::Path;
use std::time::Instant;

pub struct Args {
    pub runs: usize,
}

const SIZES: [usize; 2] = [100, 10_000];
const TARGET_MS: f64 = 100.0;

/// A policy of `n` site mounts as a large site might write it (mixed targets and options),
/// after a few ordinary sections.
pub fn generate(n: usize) -> String {
    let mut text = String::from(
        "[runtime]\nmode = \"extract\"\n\n[user_mounts]\nallowed_sources = [\"${HOME}\", \"/scratch\", \"/tmp\"]\n\n\
         [env]\npassthrough = [\"SLURM_*\", \"PMIX_*\", \"HOME\", \"PATH\"]\n\n",
    );
    for i in 0..n {
        text.push_str(&format!("[[mount]]\nsource = \"/projects/p{i:05}\"\n"));
        match i % 3 {
            0 => text.push_str("options = [\"ro\", \"rbind\"]\n"),
            1 => text.push_str(&format!("target = \"/proj/{i}\"\noptional = true\n")),
            _ => {}
        }
        text.push('\n');
    }
    text
}

pub fn run(a: &Args) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("berth-bench-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let result = measure(a, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    let rows = result?;
    println!("berth-bench policy-parse");
    println!(
        "  Policy::load of a generated policy (berth.toml, no conf.d), {} runs each",
        a.runs
    );
    println!();
    println!("site mounts      bytes    median ms      p10      p90   us/mount");
    for (n, bytes, s) in &rows {
        println!(
            "  {n:>9} {bytes:>10} {:>12.3} {:>8.3} {:>8.3} {:>10.3}",
            s.median,
            s.p10,
            s.p90,
            s.median * 1e3 / *n as f64
        );
    }
    let (small, large) = (&rows[0], &rows[1]);
    let per_mount = |(n, _, s): &(usize, usize, Summary)| s.median / *n as f64;
    println!();
    println!(
        "  cost per mount, 10,000 / 100:  {:>6.2}   (linear: about 1; quadratic: about 100)",
        per_mount(large) / per_mount(small)
    );
    println!(
        "  10,000 mounts:                 {:>6.1} ms   target < {TARGET_MS} ms  {}",
        large.2.median,
        verdict(large.2.median < TARGET_MS)
    );
    Ok(())
}

fn measure(a: &Args, dir: &Path) -> Result<Vec<(usize, usize, Summary)>, String> {
    let mut rows = Vec::new();
    for n in SIZES {
        let path = dir.join(format!("berth-{n}.toml"));
        let text = generate(n);
        std::fs::write(&path, &text)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        // Checked once, untimed: the policy must be valid and hold every mount.
        let policy = Policy::load(Some(&path)).map_err(|e| e.to_string())?;
        if policy.mounts.len() != n {
            return Err(format!(
                "{n} mounts generated, {} loaded",
                policy.mounts.len()
            ));
        }
        let mut samples = Vec::with_capacity(a.runs);
        for _ in 0..a.runs {
            let start = Instant::now();
            let policy = Policy::load(Some(&path)).map_err(|e| e.to_string())?;
            samples.push(start.elapsed().as_secs_f64() * 1e3);
            std::hint::black_box(policy);
        }
        rows.push((n, text.len(), Summary::of(&samples)));
    }
    Ok(rows)
}
