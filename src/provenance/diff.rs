//! What differs between two images (or two locks): Debian packages and
//! wheels added, removed and changed with both versions, each layer's size
//! and changed paths, fetched files, the image itself. Pure: two
//! inventories in, one report out (like `nix store diff-closures`).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::manifest::Manifest;

/// What one side holds, from a manifest or from a lock.
#[derive(Debug, Default, Clone)]
pub struct Inventory {
    /// `name` (or `name:arch` where the arch is not amd64/all) -> version.
    pub packages: BTreeMap<String, String>,
    /// wheel name -> version.
    pub wheels: BTreeMap<String, String>,
    /// layer label -> (size of its tar, when known; path -> sha256 or kind).
    pub layers: BTreeMap<String, (Option<u64>, BTreeMap<String, String>)>,
    /// fetch layer -> (url, sha256).
    pub fetched: BTreeMap<String, (String, String)>,
    /// The image's sha256, when the side is a built image.
    pub image: Option<String>,
}

impl Inventory {
    pub fn of_manifest(m: &Manifest) -> Inventory {
        let mut inv = Inventory {
            image: Some(m.image.sha256.clone()),
            ..Default::default()
        };
        for p in &m.packages {
            inv.packages
                .insert(package_name(&p.name, &p.arch), p.version.clone());
        }
        for w in &m.wheels {
            inv.wheels.insert(w.name.clone(), w.version.clone());
        }
        for l in &m.layers {
            inv.layers
                .insert(l.label.clone(), (Some(l.size), l.files.clone()));
        }
        for f in &m.fetched {
            inv.fetched
                .insert(f.layer.clone(), (f.url.clone(), f.sha256.clone()));
        }
        inv
    }
}

/// How a package is named in a diff: `name`, or `name:arch` for a foreign arch.
pub fn package_name(name: &str, arch: &str) -> String {
    match arch {
        "amd64" | "all" | "" => name.to_string(),
        a => format!("{name}:{a}"),
    }
}

#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct Versions {
    pub added: Vec<(String, String)>,
    pub removed: Vec<(String, String)>,
    /// name, from, to
    pub changed: Vec<(String, String, String)>,
}

impl Versions {
    fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct LayerDiff {
    pub label: String,
    pub size: (Option<u64>, Option<u64>),
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct Diff {
    pub equal: bool,
    pub packages: Versions,
    pub wheels: Versions,
    pub layers: Vec<LayerDiff>,
    /// layer, from (url sha256), to
    pub fetched: Vec<(String, Option<String>, Option<String>)>,
    pub image: Option<(String, String)>,
}

fn versions(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> Versions {
    use crate::plan::explain::{Change, map_diff};
    let mut v = Versions::default();
    for c in map_diff(a, b) {
        match c {
            Change::Added(n, x) => v.added.push((n.into(), x.into())),
            Change::Changed(n, x, y) => v.changed.push((n.into(), x.into(), y.into())),
            Change::Removed(n, x) => v.removed.push((n.into(), x.into())),
        }
    }
    v
}

pub fn diff(a: &Inventory, b: &Inventory) -> Diff {
    let mut d = Diff {
        packages: versions(&a.packages, &b.packages),
        wheels: versions(&a.wheels, &b.wheels),
        ..Default::default()
    };
    let labels: BTreeSet<&String> = a.layers.keys().chain(b.layers.keys()).collect();
    for l in labels {
        let (sa, fa) = a.layers.get(l).cloned().unwrap_or_default();
        let (sb, fb) = b.layers.get(l).cloned().unwrap_or_default();
        let (sa, sb) = (
            a.layers.get(l).map(|_| sa).flatten(),
            b.layers.get(l).map(|_| sb).flatten(),
        );
        let f = versions(&fa, &fb);
        let present = (a.layers.contains_key(l), b.layers.contains_key(l));
        if f.is_empty() && sa == sb && present.0 == present.1 {
            continue;
        }
        d.layers.push(LayerDiff {
            label: l.clone(),
            size: (sa, sb),
            added: f.added.into_iter().map(|x| x.0).collect(),
            removed: f.removed.into_iter().map(|x| x.0).collect(),
            changed: f.changed.into_iter().map(|x| x.0).collect(),
        });
    }
    let fl: BTreeSet<&String> = a.fetched.keys().chain(b.fetched.keys()).collect();
    for l in fl {
        let said = |x: Option<&(String, String)>| x.map(|(u, s)| format!("{u} sha256 {s}"));
        let (x, y) = (said(a.fetched.get(l)), said(b.fetched.get(l)));
        if x != y {
            d.fetched.push((l.clone(), x, y));
        }
    }
    if let (Some(x), Some(y)) = (&a.image, &b.image)
        && x != y
    {
        d.image = Some((x.clone(), y.clone()));
    }
    d.equal = d.packages.is_empty()
        && d.wheels.is_empty()
        && d.layers.is_empty()
        && d.fetched.is_empty()
        && d.image.is_none();
    d
}

fn size(n: u64) -> String {
    if n >= 1 << 20 {
        format!("{:.1} MiB", n as f64 / (1 << 20) as f64)
    } else if n >= 1 << 10 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{n} B")
    }
}

/// The diff for people, one line each; nothing when equal.
pub fn render(d: &Diff) -> String {
    let mut out = String::new();
    let mut section = |title: &str, v: &Versions| {
        if v.is_empty() {
            return;
        }
        out.push_str(&format!("{title}:\n"));
        for (n, a, b) in &v.changed {
            out.push_str(&format!("  ~ {n} {a} -> {b}\n"));
        }
        for (n, b) in &v.added {
            out.push_str(&format!("  + {n} {b}\n"));
        }
        for (n, a) in &v.removed {
            out.push_str(&format!("  - {n} {a}\n"));
        }
    };
    section("debian packages", &d.packages);
    section("python wheels", &d.wheels);
    if !d.layers.is_empty() {
        out.push_str("layers:\n");
        for l in &d.layers {
            let sz = match l.size {
                (Some(a), Some(b)) if a != b => {
                    let delta = b as i128 - a as i128;
                    let sign = if delta < 0 { "-" } else { "+" };
                    format!(
                        ": {} -> {} ({sign}{})",
                        size(a),
                        size(b),
                        size(delta.unsigned_abs() as u64)
                    )
                }
                (None, Some(b)) => format!(": added ({})", size(b)),
                (Some(a), None) => format!(": removed ({})", size(a)),
                _ => String::new(),
            };
            out.push_str(&format!("  {}{sz}\n", l.label));
            for p in &l.changed {
                out.push_str(&format!("    ~ {p}\n"));
            }
            for p in &l.added {
                out.push_str(&format!("    + {p}\n"));
            }
            for p in &l.removed {
                out.push_str(&format!("    - {p}\n"));
            }
        }
    }
    if !d.fetched.is_empty() {
        out.push_str("fetched files:\n");
        for (l, a, b) in &d.fetched {
            let s = |x: &Option<String>| x.clone().unwrap_or_else(|| "(none)".into());
            out.push_str(&format!("  layer:{l}: {} -> {}\n", s(a), s(b)));
        }
    }
    if let Some((a, b)) = &d.image {
        out.push_str(&format!("image: sha256 {a} -> {b}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv(pk: &[(&str, &str)], files: &[(&str, &str)], size: u64) -> Inventory {
        let mut i = Inventory::default();
        for (n, v) in pk {
            i.packages.insert(n.to_string(), v.to_string());
        }
        let f = files
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        i.layers.insert("layer:conf".into(), (Some(size), f));
        i.image = Some("x".into());
        i
    }

    #[test]
    fn lists_exactly_what_differs() {
        let a = inv(
            &[("nginx", "1.26.3-3"), ("old", "1")],
            &[("etc/motd", "aa"), ("etc", "dir")],
            2048,
        );
        let b = inv(
            &[("nginx", "1.26.3-4"), ("new", "2")],
            &[("etc/motd", "bb"), ("etc", "dir")],
            3072,
        );
        let d = diff(&a, &b);
        assert!(!d.equal);
        assert_eq!(
            render(&d),
            "debian packages:\n  ~ nginx 1.26.3-3 -> 1.26.3-4\n  + new 2\n  - old 1\nlayers:\n  layer:conf: 2.0 KiB -> 3.0 KiB (+1.0 KiB)\n    ~ etc/motd\n"
        );
        let same = diff(&a, &a.clone());
        assert!(same.equal);
        assert_eq!(render(&same), "");
    }
}
