//! ABAQUS-style FEA: a site's `abaqus` with its input (s4b) when given, otherwise CalculiX
//! `ccx` on an Abaqus-format deck generated here: a cantilever block of C3D20 (20-node brick)
//! elements, clamped at x=0, loaded at the free end, one linear static step. Wall time of the
//! whole solver run, native vs container, the seed's measure.

use super::exec::{self, Ctx};
use super::{Args, Metric, Variant, Workload};
use std::ffi::OsString;
use std::fmt::Write;
use std::path::{Path, PathBuf};

pub fn metrics() -> Vec<Metric> {
    vec![Metric::new("solver wall time", "s", false).target(1.01, false)]
}

/// The deck: an nx x ny x nz block of C3D20 elements, 1 x 0.1 x 0.1 m per 10 x 1 x 1 elements
/// (unit cubes of 0.01 m... scaled with the mesh), steel, clamped at x=0, 1 kN downwards at x=L.
pub fn deck(nx: u32, ny: u32, nz: u32) -> String {
    let (gx, gy, gz) = (2 * nx + 1, 2 * ny + 1, 2 * nz + 1);
    let h = 0.01; // element edge: 0.01 m; a doubled grid step is h/2
    let id = |i: u32, j: u32, k: u32| 1 + i + gx * (j + gy * k);
    let mut s = String::new();
    let _ = writeln!(s, "** berth-bench suite: cantilever block, {nx} x {ny} x {nz} C3D20 elements (benchmarks/src/suite/fea.rs)");
    let _ = writeln!(s, "*HEADING\nberth-bench cantilever {nx}x{ny}x{nz} C3D20");
    s.push_str("*NODE, NSET=NALL\n");
    let (mut fixed, mut tip) = (Vec::new(), Vec::new());
    for k in 0..gz {
        for j in 0..gy {
            for i in 0..gx {
                // C3D20 uses corners and edge midpoints: at most one odd doubled coordinate.
                if (i % 2 + j % 2 + k % 2) > 1 {
                    continue;
                }
                let n = id(i, j, k);
                let _ = writeln!(
                    s,
                    "{n}, {:.6}, {:.6}, {:.6}",
                    i as f64 * h / 2.0,
                    j as f64 * h / 2.0,
                    k as f64 * h / 2.0
                );
                if i == 0 {
                    fixed.push(n);
                }
                if i == gx - 1 {
                    tip.push(n);
                }
            }
        }
    }
    s.push_str("*ELEMENT, TYPE=C3D20, ELSET=EALL\n");
    const OFFS: [(u32, u32, u32); 20] = [
        (0, 0, 0),
        (2, 0, 0),
        (2, 2, 0),
        (0, 2, 0),
        (0, 0, 2),
        (2, 0, 2),
        (2, 2, 2),
        (0, 2, 2),
        (1, 0, 0),
        (2, 1, 0),
        (1, 2, 0),
        (0, 1, 0),
        (1, 0, 2),
        (2, 1, 2),
        (1, 2, 2),
        (0, 1, 2),
        (0, 0, 1),
        (2, 0, 1),
        (2, 2, 1),
        (0, 2, 1),
    ];
    let mut e = 0;
    for ez in 0..nz {
        for ey in 0..ny {
            for ex in 0..nx {
                e += 1;
                let nodes: Vec<String> = OFFS
                    .iter()
                    .map(|(a, b, c)| id(2 * ex + a, 2 * ey + b, 2 * ez + c).to_string())
                    .collect();
                // At most 16 entries per line: the id and 15 nodes, then the other 5.
                let _ = writeln!(
                    s,
                    "{e}, {},\n{}",
                    nodes[..15].join(", "),
                    nodes[15..].join(", ")
                );
            }
        }
    }
    let list = |name: &str, v: &[u32], s: &mut String| {
        let _ = writeln!(s, "*NSET, NSET={name}");
        for c in v.chunks(12) {
            let line: Vec<String> = c.iter().map(|n| n.to_string()).collect();
            let _ = writeln!(s, "{},", line.join(", "));
        }
    };
    list("FIXED", &fixed, &mut s);
    list("TIP", &tip, &mut s);
    s.push_str("*MATERIAL, NAME=STEEL\n*ELASTIC\n210000000000., 0.3\n");
    s.push_str("*SOLID SECTION, ELSET=EALL, MATERIAL=STEEL\n");
    s.push_str("*BOUNDARY\nFIXED, 1, 3\n");
    s.push_str("*STEP\n*STATIC\n*CLOAD\n");
    let f = -1000.0 / tip.len() as f64;
    for n in &tip {
        let _ = writeln!(s, "{n}, 3, {f:.9}");
    }
    s.push_str("*NODE PRINT, NSET=TIP\nU\n*NODE FILE\nU\n*EL FILE\nS\n*END STEP\n");
    s
}

const RESULTS_NOTE: &str = "every container run's printed results (job.dat: tip displacements) are compared byte for byte with the native run's of the same repetition; a difference fails the row";

enum Solver {
    Ccx(String),
    Abaqus(String, PathBuf),
}

pub fn workload<'a>(a: &'a Args, ctx: &'a Ctx) -> Workload<'a> {
    let (solver, detail) = match (&a.abaqus, &a.abaqus_input) {
        (Some(cmd), Some(input)) => (
            Solver::Abaqus(cmd.clone(), input.clone()),
            format!("site ABAQUS `{cmd}` on {}", input.display()),
        ),
        _ => {
            let [x, y, z] = a.fea_mesh;
            (
                Solver::Ccx(a.ccx.clone()),
                format!(
                    "CalculiX `{}` on a generated Abaqus-format deck: cantilever, {x}x{y}x{z} = {} C3D20 elements, linear static",
                    a.ccx,
                    x * y * z
                ),
            )
        }
    };
    let (base, notes, setup_error) = match prepare(a, ctx, &solver) {
        Ok((d, n)) => (Some(d), n, None),
        Err(e) => (None, Vec::new(), Some(e)),
    };
    let solver = std::rc::Rc::new(solver);
    // The native run's results, for the container runs of the same repetition to match.
    let last = std::rc::Rc::new(std::cell::RefCell::new(None::<Vec<u8>>));
    let containers = ctx
        .sides()
        .into_iter()
        .map(|mode| {
            let (solver, base, last) = (solver.clone(), base.clone(), last.clone());
            Variant::new(super::side_label(&mode), move |w| {
                let (secs, dat) = once(ctx, &solver, base.as_deref(), Some(&mode), w)?;
                if dat.is_some() && *last.borrow() != dat {
                    return Err("the results (job.dat) differ from the native run's".into());
                }
                Ok(vec![secs])
            })
        })
        .collect();
    Workload {
        name: "ABAQUS-style FEA",
        detail,
        metrics: metrics(),
        native: Variant::new("native", move |w| {
            let (secs, dat) = once(ctx, &solver, base.as_deref(), None, w)?;
            *last.borrow_mut() = dat;
            Ok(vec![secs])
        }),
        containers,
        setup_error,
        notes,
    }
}

fn prepare(a: &Args, ctx: &Ctx, solver: &Solver) -> Result<(PathBuf, Vec<String>), String> {
    let base = ctx.dir("fea")?;
    match solver {
        Solver::Ccx(ccx) => {
            if !Path::new(ccx).exists() {
                return Err(format!(
                    "{ccx} is missing on the host (Debian package calculix-ccx: scripts/install-deps.sh)"
                ));
            }
            let [x, y, z] = a.fea_mesh;
            for (name, text) in [("deck.inp", deck(x, y, z)), ("warm.inp", deck(2, 1, 1))] {
                let p = base.join(name);
                std::fs::write(&p, text).map_err(|e| e.to_string())?;
                ctx.give(&p)?;
            }
            let sums = super::linpack::checksums(ctx, &[ccx.as_str()]);
            Ok((base, vec![sums, RESULTS_NOTE.to_string()]))
        }
        Solver::Abaqus(_, input) => {
            let p = base.join("s4b.inp");
            std::fs::copy(input, &p)
                .map_err(|e| format!("cannot copy {}: {e}", input.display()))?;
            ctx.give(&p)?;
            Ok((base, Vec::new()))
        }
    }
}

/// One solver run in a fresh directory, natively (`mode` None) or in berth's mode: seconds, and
/// what CalculiX printed (job.dat).
fn once(
    ctx: &Ctx,
    solver: &Solver,
    base: Option<&Path>,
    mode: Option<&str>,
    warm: bool,
) -> Result<(f64, Option<Vec<u8>>), String> {
    let base = base.ok_or("not set up")?;
    let dir = base.join(mode.unwrap_or("native"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    ctx.give(&dir)?;
    let argv: Vec<OsString> = match solver {
        Solver::Ccx(ccx) => {
            let deck = if warm { "warm.inp" } else { "deck.inp" };
            std::fs::copy(base.join(deck), dir.join("job.inp")).map_err(|e| e.to_string())?;
            vec![ccx.into(), "-i".into(), "job".into()]
        }
        Solver::Abaqus(cmd, _) => {
            std::fs::copy(base.join("s4b.inp"), dir.join("s4b.inp")).map_err(|e| e.to_string())?;
            let mut v: Vec<OsString> = cmd.split_whitespace().map(OsString::from).collect();
            v.extend(["job=s4b", "input=s4b.inp", "interactive"].map(OsString::from));
            v
        }
    };
    let cmd = match mode {
        Some("docker") => {
            ctx.docker()?
                .run(false, &[(&dir, &dir.to_string_lossy())], Some(&dir), &argv)
        }
        Some(mode) => ctx.command(&ctx.berth_run(mode, &[], &argv), &dir, None),
        None => ctx.command(&argv, &dir, None),
    };
    let done = exec::run(cmd)?;
    if let Solver::Ccx(_) = solver {
        // ccx exits 0 on some errors: the results must be there.
        let dat = std::fs::read(dir.join("job.dat")).unwrap_or_default();
        if !dir.join("job.frd").exists() || !String::from_utf8_lossy(&dat).contains("displacements")
        {
            let last = done.stdout.lines().rev().find(|l| !l.trim().is_empty());
            return Err(format!("ccx wrote no results: {}", last.unwrap_or("")));
        }
        return Ok((done.secs, Some(dat)));
    }
    Ok((done.secs, None))
}

#[cfg(test)]
mod tests {
    #[test]
    fn deck_has_every_element_and_the_used_nodes_only() {
        let d = super::deck(3, 2, 1);
        let elements = d
            .split("*ELEMENT")
            .nth(1)
            .unwrap()
            .split("*NSET")
            .next()
            .unwrap();
        // Two lines per element: the id and 15 nodes, then 5.
        assert_eq!(elements.lines().skip(1).count(), 2 * 3 * 2);
        // (7*5*3) grid points, minus face centres and element centres.
        let nodes = d
            .split("*NODE, NSET=NALL")
            .nth(1)
            .unwrap()
            .split("*ELEMENT")
            .next()
            .unwrap();
        let corners = 4 * 3 * 2;
        let edges = 3 * 3 * 2 + 4 * 2 * 2 + 4 * 3;
        assert_eq!(nodes.lines().skip(1).count(), corners + edges);
        if let Ok(p) = std::env::var("BERTH_BENCH_WRITE_DECK") {
            std::fs::write(p, super::deck(40, 8, 8)).unwrap();
        }
    }
}
