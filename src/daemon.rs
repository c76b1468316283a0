//! The daemon: prepares directories after validation and runs sync cycles.

use crate::config::Loaded;

/// Run-time options from the command line.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// One cycle, then return.
    pub once: bool,
    /// Trust local flags on the first cycle.
    pub offline: bool,
}

/// Run the daemon until stopped (or one cycle with `once`).
pub async fn run(_loaded: Loaded, _opts: Options) -> anyhow::Result<()> {
    anyhow::bail!("sync is not built yet")
}
