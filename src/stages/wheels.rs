//! `pip` layers: a virtual environment made from hash-locked wheels, by
//! unpacking them (a wheel is a zip laid out for site-packages), without
//! running pip or Python in the image: no network, no bytecode, no clock.
//!
//! Layout, as `python3 -m venv` makes it: `pyvenv.cfg`, `bin/python*`
//! links to the image's interpreter, `lib/pythonX.Y/site-packages/`, and
//! console scripts in `bin/` from each wheel's `entry_points.txt`.

use std::io::Read;

use anyhow::{Context, Result, bail};

use super::tarball::{Entry, Kind, Tree};

/// The Python of a Debian suite, for `pip` layers that do not say.
pub fn suite_python(suite: &str) -> Option<&'static str> {
    match suite.split('-').next().unwrap_or(suite) {
        "trixie" | "forky" => Some("3.13"),
        "bookworm" => Some("3.11"),
        "bullseye" => Some("3.9"),
        "buster" => Some("3.7"),
        _ => None,
    }
}

/// The venv at `venv` holding `wheels` (file name, bytes) for Python `py`.
pub fn venv_tree(venv: &str, py: &str, wheels: &[(String, Vec<u8>)], mtime: u64) -> Result<Tree> {
    let root = venv.trim_matches('/').to_string();
    let site = format!("{root}/lib/python{py}/site-packages");
    let mut t = Tree::default();
    let file = |data: Vec<u8>, mode| Entry::file(data, mode, mtime);
    let link = |target: &str| Entry {
        kind: Kind::Symlink(target.into()),
        ..Entry::dir(0o777, mtime)
    };
    t.insert(&format!("{root}/pyvenv.cfg"), file(format!("home = /usr/bin\ninclude-system-site-packages = false\nversion = {py}\nexecutable = /usr/bin/python{py}\n").into_bytes(), 0o644));
    t.insert(
        &format!("{root}/bin/python"),
        link(&format!("/usr/bin/python{py}")),
    );
    t.insert(&format!("{root}/bin/python3"), link("python"));
    t.insert(&format!("{root}/bin/python{py}"), link("python"));
    t.insert(&format!("{root}/lib64"), link("lib"));
    t.insert(&site, Entry::dir(0o755, mtime));
    let python = format!("/{root}/bin/python");
    for (name, data) in wheels {
        install(&mut t, name, data, &root, &site, &python, mtime)
            .with_context(|| format!("installing {name}"))?;
    }
    t.add_parents(mtime);
    Ok(t)
}

fn install(
    t: &mut Tree,
    name: &str,
    data: &[u8],
    root: &str,
    site: &str,
    python: &str,
    mtime: u64,
) -> Result<()> {
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(data)).context("not a zip file")?;
    let mut entry_points = None;
    for i in 0..z.len() {
        let mut f = z.by_index(i)?;
        if f.is_dir() {
            continue;
        }
        let raw = f
            .name()
            .map(|n| n.to_string())
            .context("unreadable member name")?;
        let parts: Vec<&str> = raw.split('/').collect();
        if raw.starts_with('/') || parts.iter().any(|p| *p == ".." || p.is_empty()) {
            bail!("wheel member `{raw}` leaves the venv");
        }
        let exec = f.unix_mode().is_some_and(|m| m & 0o111 != 0);
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes)?;
        let (dest, script) = match parts.first().filter(|p| p.ends_with(".data")) {
            Some(_) if parts.len() >= 3 => {
                let rest = parts[2..].join("/");
                match parts[1] {
                    "purelib" | "platlib" => (format!("{site}/{rest}"), false),
                    "scripts" => (format!("{root}/bin/{rest}"), true),
                    "data" => (format!("{root}/{rest}"), false),
                    "headers" => (format!("{root}/include/{rest}"), false),
                    other => bail!("wheel member `{raw}`: unknown data directory `{other}`"),
                }
            }
            _ => (format!("{site}/{raw}"), false),
        };
        if raw.ends_with(".dist-info/entry_points.txt") {
            entry_points = Some(String::from_utf8_lossy(&bytes).into_owned());
        }
        if script && bytes.starts_with(b"#!python") {
            let rest = bytes[8..].to_vec();
            bytes = format!("#!{python}").into_bytes();
            bytes.extend(rest);
        }
        t.insert(
            &dest,
            Entry::file(bytes, if exec || script { 0o755 } else { 0o644 }, mtime),
        );
    }
    if let Some(ep) = entry_points {
        for (script, target) in console_scripts(&ep) {
            let Some((module, attr)) = target.split_once(':') else {
                continue;
            };
            let attr = attr.split_whitespace().next().unwrap_or(attr);
            let ok = |s: &str| {
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._".contains(&b))
            };
            if !ok(&script.replace('-', "_")) || !ok(module) || !ok(attr) {
                continue;
            }
            let body = format!(
                "#!{python}\n# -*- coding: utf-8 -*-\nimport re\nimport sys\nfrom {module} import {head}\nif __name__ == \"__main__\":\n    sys.argv[0] = re.sub(r\"(-script\\.pyw|\\.exe)?$\", \"\", sys.argv[0])\n    sys.exit({attr}())\n",
                head = attr.split('.').next().unwrap_or(attr)
            );
            t.insert(
                &format!("{root}/bin/{script}"),
                Entry::file(body.into_bytes(), 0o755, mtime),
            );
        }
    }
    let _ = name;
    Ok(())
}

/// `[console_scripts]` of an entry_points.txt: (script, module:attr).
fn console_scripts(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with('[') {
            inside = l == "[console_scripts]";
        } else if inside && let Some((k, v)) = l.split_once('=') {
            out.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::model::Wheel;
    use std::io::Write;

    fn wheel() -> Vec<u8> {
        let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let o = zip::write::SimpleFileOptions::default();
        z.start_file("demo/__init__.py", o).unwrap();
        z.write_all(b"def main():\n    return 0\n").unwrap();
        z.start_file("demo-1.0.dist-info/entry_points.txt", o)
            .unwrap();
        z.write_all(b"[console_scripts]\ndemo-run = demo:main\n")
            .unwrap();
        z.start_file("demo-1.0.data/scripts/tool", o).unwrap();
        z.write_all(b"#!python\nprint(1)\n").unwrap();
        z.finish().unwrap().into_inner()
    }

    #[test]
    fn a_wheel_becomes_a_venv() {
        let t = venv_tree(
            "/opt/venvs/x",
            "3.13",
            &[("demo-1.0-py3-none-any.whl".into(), wheel())],
            5,
        )
        .unwrap();
        assert!(
            t.get("opt/venvs/x/lib/python3.13/site-packages/demo/__init__.py")
                .is_some()
        );
        let run = t.get("opt/venvs/x/bin/demo-run").unwrap();
        assert_eq!(run.mode, 0o755);
        let Kind::File(d) = &run.kind else { panic!() };
        assert!(String::from_utf8_lossy(d).starts_with("#!/opt/venvs/x/bin/python\n"));
        let Kind::File(d) = &t.get("opt/venvs/x/bin/tool").unwrap().kind else {
            panic!()
        };
        assert!(d.starts_with(b"#!/opt/venvs/x/bin/python\n"));
        assert_eq!(
            t.get("opt/venvs/x/bin/python").unwrap().kind,
            Kind::Symlink("/usr/bin/python3.13".into())
        );
    }

    #[test]
    fn wheel_names() {
        let w = Wheel::from_file(
            "matrix_synapse-1.163.2-cp310-abi3-manylinux_2_28_x86_64.whl",
            "x",
        )
        .unwrap();
        assert_eq!(
            (w.name.as_str(), w.version.as_str()),
            ("matrix-synapse", "1.163.2")
        );
    }
}
