//! The stages of a build: each receives what it needs and returns or
//! writes what it made. They run tools only through [`crate::tools`].

pub mod boot;
pub mod disk;
pub mod fat;
pub mod fetched;
pub mod filesystem;
pub mod image;
pub mod layer;
pub mod qcow2;
pub mod rootfs;
pub mod run;
pub mod scratch;
pub mod tarball;
pub mod tools_env;
pub mod wheels;
