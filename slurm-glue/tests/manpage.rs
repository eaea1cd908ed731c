//! berth-slurm(8) documents every plugstack.conf argument the plugin takes and every option it
//! registers with srun/sbatch/salloc: the lists come from the code, so a new argument or option
//! fails here until the page describes it.

use spank_berth::args::OPTIONS;
use spank_berth::config::ARGUMENTS;

fn page() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/man/berth-slurm.8");
    // roff writes a dash as `\-`.
    std::fs::read_to_string(path)
        .expect("docs/man/berth-slurm.8")
        .replace("\\-", "-")
}

#[test]
fn every_plugstack_argument_is_documented() {
    let page = page();
    let missing: Vec<&str> = ARGUMENTS
        .iter()
        .filter(|a| !page.contains(&format!("\\fB{a}=\\fR")))
        .copied()
        .collect();
    assert!(missing.is_empty(), "not in berth-slurm.8: {missing:?}");
}

#[test]
fn every_spank_option_is_documented() {
    let page = page();
    let missing: Vec<&str> = OPTIONS
        .iter()
        .map(|o| o.0)
        .filter(|name| !page.contains(&format!("\\fB--{name}\\fR")))
        .collect();
    assert!(missing.is_empty(), "not in berth-slurm.8: {missing:?}");
}
