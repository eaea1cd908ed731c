// The git commit and cargo features `berth-image --version` prints: the launcher's script.
include!("../launcher/build.rs");
