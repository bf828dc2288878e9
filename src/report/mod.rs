//! Reporting: how library code tells people what it is doing. Operations
//! and stages call a [`Reporter`]; only the CLI implements one that draws
//! (and hides it off a terminal, with `-q` and with `--json`).

use crate::plan::Step;

/// Progress of a build, for people; the CLI decides how to show it.
/// Called from several threads at once (parallel downloads).
pub trait Reporter: Sync {
    fn step_started(&self, step: &Step);
    fn step_done(&self, step: &Step, cached: bool, seconds: f64);
    /// `step` was taken from the cache at `url` (`bytes` read) instead of built.
    fn step_substituted(&self, step: &Step, url: &str, bytes: u64, seconds: f64) {
        let _ = (url, bytes);
        self.step_done(step, false, seconds);
    }
    /// A line for people about longer work (booting, waiting).
    fn note(&self, _text: &str) {}
    /// Downloads begin: `what` (for people), `bytes` in all.
    fn download_started(&self, _what: &str, _bytes: u64) {}
    /// `bytes` more arrived.
    fn downloaded(&self, _bytes: u64) {}
    /// The downloads are over (done or failed).
    fn download_done(&self) {}
}
