//! Operations: one user-facing operation each, over the store, plan and
//! stages. The CLI parses options, calls one function here and prints what
//! it returns; nothing here draws progress or parses arguments.

pub mod build;
pub mod gc;
pub mod publish;
pub mod resolve;
