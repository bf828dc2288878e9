//! Provenance of an image: its manifest (what it is and holds), the SBOM
//! rendered from it, the in-toto statement of how it was made, and minisign
//! signatures over all three. Rendering is pure (values in, bytes out);
//! reading and writing key and signature files is in `sign`.

pub mod diff;
pub mod manifest;
pub mod sbom;
pub mod sign;
pub mod statement;
