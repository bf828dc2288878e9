//! minisign signatures (ed25519 over the file's BLAKE2b-512) and the key
//! files of `minisign -G`, so the stock tool verifies what mimg signs
//! (`minisign -Vm FILE -p KEY.pub`) and mimg signs with its keys. The
//! secret key file is never printed nor put on a command line; a password-
//! protected one is opened with the password in the file that
//! `MIMG_SIGN_PASSWORD_FILE` names.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use minisign::{PublicKey, PublicKeyBox, SecretKey, SecretKeyBox, SignatureBox};

/// Where the signature of `file` goes: `FILE.minisig`, as minisign puts it.
pub fn sig_path(file: &Path) -> PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push(".minisig");
    PathBuf::from(s)
}

/// Make a key pair: the secret key at `out` (mode 0600, unencrypted, as
/// `minisign -G -W` writes it) and the public key at `OUT.pub`. Refuses to
/// replace an existing secret key.
pub fn keygen(out: &Path) -> Result<(PathBuf, String)> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let kp = minisign::KeyPair::generate_unencrypted_keypair()
        .map_err(|e| anyhow::anyhow!("cannot make a key pair: {e}"))?;
    let sk = kp
        .sk
        .to_box(Some("mimg secret key"))
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .into_string();
    let pk_box = kp
        .pk
        .to_box()
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .into_string();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| {
            format!(
                "cannot create {} (a key that exists is never replaced)",
                out.display()
            )
        })?;
    f.write_all(sk.as_bytes())?;
    f.sync_all()?;
    let pub_path = PathBuf::from(format!("{}.pub", out.display()));
    crate::paths::atomic_write(&pub_path, pk_box.as_bytes())?;
    Ok((pub_path, kp.pk.to_base64()))
}

/// Read a secret key file (minisign's format, from `minisign -G` or
/// `mimg keygen`).
pub fn secret_key(path: &Path) -> Result<SecretKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the secret key {}", path.display()))?;
    let sk_box = SecretKeyBox::from_string(&text)
        .map_err(|e| anyhow::anyhow!("{} is not a minisign secret key: {e}", path.display()))?;
    let bad =
        |e: minisign::PError| anyhow::anyhow!("cannot open the secret key {}: {e}", path.display());
    match sk_box.clone().into_unencrypted_secret_key() {
        Ok(sk) if !sk.is_encrypted() => Ok(sk),
        Err(e) if matches!(e.kind(), minisign::ErrorKind::Verify) => {
            // minisign 0.11's `-G -W` leaves an unencrypted key's checksum
            // zero; the key itself is whole: give it its checksum.
            let fixed = with_checksum(&text).ok_or_else(|| {
                anyhow::anyhow!("the secret key {} is damaged: {e}", path.display())
            })?;
            SecretKeyBox::from_string(&fixed)
                .and_then(|b| b.into_unencrypted_secret_key())
                .map_err(bad)
        }
        _ => {
            let Some(pw_file) = std::env::var_os("MIMG_SIGN_PASSWORD_FILE") else {
                bail!(
                    "the secret key {} is protected by a password\nhint: put the password in a file (mode 0600) and name it in MIMG_SIGN_PASSWORD_FILE",
                    path.display()
                );
            };
            let pw = std::fs::read_to_string(&pw_file)
                .with_context(|| format!("cannot read {}", Path::new(&pw_file).display()))?;
            let pw = pw.strip_suffix('\n').unwrap_or(&pw).to_string();
            sk_box.into_secret_key(Some(pw)).map_err(bad)
        }
    }
}

/// An unencrypted secret key box whose checksum field is zero, with the
/// checksum minisign computes (BLAKE2b-256 over algorithm, key id and
/// key); None for anything else.
fn with_checksum(text: &str) -> Option<String> {
    use base64::Engine;
    use blake2::digest::{Update, VariableOutput};
    let mut lines = text.lines();
    let comment = lines.next()?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut raw = b64.decode(lines.next()?.trim()).ok()?;
    // sig_alg 2, kdf_alg 2, chk_alg 2, salt 32, opslimit 8, memlimit 8,
    // key id 8, key 64, checksum 32.
    if raw.len() != 158 || raw[2..4] != [0, 0] || raw[126..].iter().any(|b| *b != 0) {
        return None;
    }
    let mut h = blake2::Blake2bVar::new(32).ok()?;
    h.update(&raw[0..2]);
    h.update(&raw[54..126]);
    h.finalize_variable(&mut raw[126..]).ok()?;
    Some(format!("{comment}\n{}\n", b64.encode(&raw)))
}

/// A public key: a file as `minisign -G` writes it, or the key itself
/// (the base64 line, as `minisign -P` takes it).
pub fn public_key(arg: &str) -> Result<PublicKey> {
    let p = Path::new(arg);
    if p.is_file() {
        let text = std::fs::read_to_string(p)
            .with_context(|| format!("cannot read the public key {}", p.display()))?;
        let from_box = PublicKeyBox::from_string(&text).and_then(|b| b.into_public_key());
        return from_box
            .or_else(|_| PublicKey::from_base64(text.trim()))
            .map_err(|e| anyhow::anyhow!("{} is not a minisign public key: {e}", p.display()));
    }
    PublicKey::from_base64(arg.trim()).map_err(|e| {
        anyhow::anyhow!("`{arg}` is neither a public key file nor a minisign public key: {e}")
    })
}

/// Sign `file` into `FILE.minisig`; the trusted comment names what it is.
pub fn sign(file: &Path, sk: &SecretKey, trusted_comment: &str) -> Result<PathBuf> {
    let f = std::fs::File::open(file).with_context(|| format!("cannot read {}", file.display()))?;
    let name = file.file_name().unwrap_or_default().to_string_lossy();
    let sig = minisign::sign(
        None,
        sk,
        std::io::BufReader::new(f),
        Some(trusted_comment),
        Some(&format!("signature of {name} by mimg")),
    )
    .map_err(|e| anyhow::anyhow!("cannot sign {}: {e}", file.display()))?;
    let out = sig_path(file);
    crate::paths::atomic_write(&out, sig.to_string().as_bytes())?;
    Ok(out)
}

/// Check `FILE.minisig` against `file` and `pk`; gives the trusted comment.
pub fn verify(file: &Path, pk: &PublicKey) -> Result<String> {
    let sp = sig_path(file);
    let text = std::fs::read_to_string(&sp)
        .with_context(|| format!("cannot read the signature {}", sp.display()))?;
    let sig = SignatureBox::from_string(&text)
        .map_err(|e| anyhow::anyhow!("{} is not a minisign signature: {e}", sp.display()))?;
    let data =
        std::fs::File::open(file).with_context(|| format!("cannot read {}", file.display()))?;
    minisign::verify(pk, &sig, std::io::BufReader::new(data), true, false, false)
        .map_err(|e| anyhow::anyhow!("{}: the signature does not verify: {e}", file.display()))?;
    sig.trusted_comment()
        .map_err(|e| anyhow::anyhow!("{}: {e}", sp.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_and_verifies_and_refuses_a_flipped_byte() {
        let d = tempfile::tempdir().unwrap();
        let (pub_path, b64) = keygen(&d.path().join("k")).unwrap();
        assert!(
            keygen(&d.path().join("k")).is_err(),
            "an existing key is never replaced"
        );
        let f = d.path().join("img");
        std::fs::write(&f, b"image bytes").unwrap();
        let sk = secret_key(&d.path().join("k")).unwrap();
        sign(&f, &sk, "file:img").unwrap();
        for pk in [pub_path.to_string_lossy().to_string(), b64] {
            assert_eq!(verify(&f, &public_key(&pk).unwrap()).unwrap(), "file:img");
        }
        std::fs::write(&f, b"image bytez").unwrap();
        let e = verify(&f, &public_key(pub_path.to_str().unwrap()).unwrap()).unwrap_err();
        assert!(e.to_string().contains("does not verify"), "{e}");
    }
}
