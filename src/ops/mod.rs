//! Operations: one user-facing operation each, over the store, plan and
//! stages. The CLI parses options, calls one function here and prints what
//! it returns; nothing here draws progress or parses arguments.

pub mod build;
pub mod cache;
pub mod diff;
pub mod gc;
pub mod lock;
pub mod pins;
pub mod publish;
pub mod resolve;
pub mod sign;
pub mod targets;
pub mod test;
pub mod testnet;
pub mod why;

/// How a build may reach the network.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Never touch the network; fail naming the first thing missing.
    pub offline: bool,
    /// Fail when the recipe changed since its lock (or has none).
    pub locked: bool,
    /// Build every missing step here: take none from a substituter.
    pub no_substitute: bool,
}
