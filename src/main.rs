//! mimg: a Nix-style builder of immutable, bit-reproducible VM images.

mod cache;
mod cli;
mod debs;
mod fetch;
mod lock;
mod ops;
mod overlay;
mod paths;
mod plan;
mod provenance;
mod recipe;
mod report;
mod seed;
mod slots;
mod stages;
mod store;
mod tools;
mod vm;

fn main() -> std::process::ExitCode {
    cli::main()
}
