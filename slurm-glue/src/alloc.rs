//! sbatch and salloc (allocator context): the same submit-time check as srun's, unless the
//! site does not take the flags there (plugstack `sbatch=0`).

use crate::config::config;
use crate::spank::Spank;
use berth_launcher::Error;

pub fn post_opt(sp: Spank, av: &[String]) -> Result<(), Error> {
    let cfg = config(av)?;
    crate::srun::check(sp, &cfg, true)
}
