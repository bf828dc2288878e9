//! Why a step's key moved: compare its inputs (and what their hashes
//! cover, `Step::detail`) with those of the same step in another build,
//! down to the first leaf that differs. Pure: values in, sentences out.
//!
//! One change is said once: a step whose input is another step's key says
//! only "inputs layer:x changed"; the leaf is named at layer:x itself.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// Leaf -> value maps, by input name (`Step::detail`, `Meta::detail`).
pub type Detail = BTreeMap<String, BTreeMap<String, String>>;

/// One side of a comparison: a step's inputs and details, and the labels of
/// the steps of its build by key (to name the steps its inputs point at).
pub struct Side<'a> {
    pub inputs: &'a BTreeMap<String, Value>,
    pub detail: &'a Detail,
    pub labels: &'a BTreeMap<String, String>,
}

/// Inputs whose values are other steps' keys.
const STEP_REFS: &[&str] = &["tools", "rootfs", "layers", "over"];

/// At most this many lines are said of one input; the rest are counted.
const MOST: usize = 20;

/// The reasons `new` differs from `old`, one sentence each; empty when
/// their inputs are equal.
pub fn reasons(old: &Side, new: &Side) -> Vec<String> {
    let mut out = Vec::new();
    let mut changed_refs: BTreeSet<String> = BTreeSet::new();
    let mut added_refs: Vec<String> = Vec::new();
    let mut removed_refs: Vec<String> = Vec::new();
    let names: BTreeSet<&String> = old.inputs.keys().chain(new.inputs.keys()).collect();
    for name in names {
        let (a, b) = (old.inputs.get(name), new.inputs.get(name));
        if a == b {
            continue;
        }
        let (Some(a), Some(b)) = (a, b) else {
            out.push(match b {
                Some(_) => format!("input {name} added"),
                None => format!("input {name} removed"),
            });
            continue;
        };
        if STEP_REFS.contains(&name.as_str()) {
            step_refs(
                a,
                b,
                old.labels,
                new.labels,
                &mut changed_refs,
                &mut added_refs,
                &mut removed_refs,
            );
            continue;
        }
        let mut lines = Vec::new();
        match name.as_str() {
            "debs" => match (old.detail.get("debs"), new.detail.get("debs")) {
                (Some(x), Some(y)) => versioned("deb", x, y, &mut lines),
                _ => lines.push("pinned .debs changed".to_string()),
            },
            "packages" => apt_inputs(a, b, &mut lines),
            "layer" => layer(
                a,
                b,
                old.detail.get("content"),
                new.detail.get("content"),
                &mut lines,
            ),
            _ => leaves(name, a, b, &mut lines),
        }
        fold(lines, &mut out);
    }
    if !changed_refs.is_empty() {
        let v: Vec<_> = changed_refs.into_iter().collect();
        out.push(format!("inputs {} changed", v.join(", ")));
    }
    for l in added_refs {
        out.push(format!("{l} added"));
    }
    for l in removed_refs {
        out.push(format!("{l} removed"));
    }
    out
}

fn label_of(labels: &BTreeMap<String, String>, key: &str) -> String {
    labels
        .get(key)
        .cloned()
        .unwrap_or_else(|| format!("step {}", &key[..key.len().min(12)]))
}

fn keys_of(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .filter_map(|x| x.as_str().map(String::from))
            .collect(),
        _ => Vec::new(),
    }
}

/// Inputs that are other steps' keys: which of those steps changed, came
/// or went (by label).
fn step_refs(
    a: &Value,
    b: &Value,
    old_labels: &BTreeMap<String, String>,
    new_labels: &BTreeMap<String, String>,
    changed: &mut BTreeSet<String>,
    added: &mut Vec<String>,
    removed: &mut Vec<String>,
) {
    let (ka, kb) = (keys_of(a), keys_of(b));
    let old_names: BTreeSet<String> = ka.iter().map(|k| label_of(old_labels, k)).collect();
    let new_names: BTreeSet<String> = kb.iter().map(|k| label_of(new_labels, k)).collect();
    for k in kb.iter().filter(|k| !ka.contains(k)) {
        let l = label_of(new_labels, k);
        if old_names.contains(&l) {
            changed.insert(l);
        } else if !added.contains(&l) {
            added.push(l);
        }
    }
    for k in ka.iter().filter(|k| !kb.contains(k)) {
        let l = label_of(old_labels, k);
        if !new_names.contains(&l) && !removed.contains(&l) {
            removed.push(l);
        }
    }
    if ka != kb && changed.is_empty() && added.is_empty() && removed.is_empty() {
        // The same steps in another order.
        changed.insert("order of steps".to_string());
    }
}

/// One entry that differs between two maps.
pub enum Change<'a> {
    Added(&'a str, &'a str),
    Changed(&'a str, &'a str, &'a str),
    Removed(&'a str, &'a str),
}

/// What differs between two maps: entries of `b` added or changed (in
/// `b`'s order), then entries of `a` removed. The one map comparison behind
/// `mimg why` and `mimg diff`.
pub fn map_diff<'a>(
    a: &'a BTreeMap<String, String>,
    b: &'a BTreeMap<String, String>,
) -> Vec<Change<'a>> {
    let mut out = Vec::new();
    for (n, v) in b {
        match a.get(n) {
            None => out.push(Change::Added(n, v)),
            Some(o) if o != v => out.push(Change::Changed(n, o, v)),
            Some(_) => {}
        }
    }
    for (n, v) in a {
        if !b.contains_key(n) {
            out.push(Change::Removed(n, v));
        }
    }
    out
}

/// Maps of `NAME -> "VERSION SHA256"` (debs, wheels): what came, went or
/// moved, with both versions.
fn versioned(
    what: &str,
    a: &BTreeMap<String, String>,
    b: &BTreeMap<String, String>,
    out: &mut Vec<String>,
) {
    let split = |v: &str| -> (String, String) {
        let mut it = v.splitn(2, ' ');
        (
            it.next().unwrap_or("").to_string(),
            it.next().unwrap_or("").to_string(),
        )
    };
    for c in map_diff(a, b) {
        out.push(match c {
            Change::Added(n, v) => format!("{what} {n} {} added", split(v).0),
            Change::Removed(n, v) => format!("{what} {n} {} removed", split(v).0),
            Change::Changed(n, o, v) => {
                let ((av, as_), (bv, bs)) = (split(o), split(v));
                if av != bv {
                    format!("{what} {n} {av} -> {bv}")
                } else {
                    format!("{what} {n} {av}: sha256 {} -> {}", short(&as_), short(&bs))
                }
            }
        });
    }
}

/// Path listings (a files layer's tree): which paths came, went or changed.
fn listing(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>, out: &mut Vec<String>) {
    for c in map_diff(a, b) {
        out.push(match c {
            Change::Added(p, _) => format!("file {p} added"),
            Change::Changed(p, _, _) => format!("file {p} changed"),
            Change::Removed(p, _) => format!("file {p} removed"),
        });
    }
}

/// A layer's spec: its fields, then what its content hash covers.
fn layer(
    a: &Value,
    b: &Value,
    da: Option<&BTreeMap<String, String>>,
    db: Option<&BTreeMap<String, String>>,
    out: &mut Vec<String>,
) {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v.as_object_mut() {
            m.remove("content");
        }
        v
    };
    let (sa, sb) = (strip(a), strip(b));
    if sa != sb {
        leaves("", &sa, &sb, out);
    }
    if a.get("content") != b.get("content") {
        match (da, db) {
            (Some(x), Some(y)) if b["kind"] == "pip" => versioned("wheel", x, y, out),
            (Some(x), Some(y)) => listing(x, y, out),
            _ => out.push("content changed".to_string()),
        }
    }
}

/// The rootfs's apt packages by source: which were asked for or dropped.
fn apt_inputs(a: &Value, b: &Value, out: &mut Vec<String>) {
    let set = |v: &Value| -> BTreeSet<(String, String)> {
        let mut s = BTreeSet::new();
        if let Some(m) = v.as_object() {
            for (src, ps) in m {
                for p in ps.as_array().into_iter().flatten() {
                    s.insert((src.clone(), p.as_str().unwrap_or_default().to_string()));
                }
            }
        }
        s
    };
    let (sa, sb) = (set(a), set(b));
    let said = |(src, p): &(String, String)| {
        if src.is_empty() {
            p.clone()
        } else {
            format!("{p} (source {src})")
        }
    };
    for x in sb.difference(&sa) {
        out.push(format!("apt input {} added", said(x)));
    }
    for x in sa.difference(&sb) {
        out.push(format!("apt input {} removed", said(x)));
    }
}

/// The first differing leaves of two JSON values, by dotted path.
fn leaves(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    if a == b {
        return;
    }
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) => leaves(&join(k), p, q, out),
                    (None, Some(q)) => out.push(format!("{} set to {}", join(k), said(q))),
                    (Some(_), None) => out.push(format!("{} removed", join(k))),
                    (None, None) => {}
                }
            }
        }
        _ => {
            let (sa, sb) = (said(a), said(b));
            if sa.len() + sb.len() > 80 || sa.contains('\n') || sb.contains('\n') {
                out.push(format!("{path} changed"));
            } else {
                out.push(format!("{path} {sa} -> {sb}"));
            }
        }
    }
}

fn said(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn short(s: &str) -> &str {
    &s[..s.len().min(12)]
}

fn fold(lines: Vec<String>, out: &mut Vec<String>) {
    let n = lines.len();
    out.extend(lines.into_iter().take(MOST));
    if n > MOST {
        out.push(format!("... and {} more", n - MOST));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn m(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    fn ins(v: Value) -> BTreeMap<String, Value> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn names_the_leaf_and_says_a_step_reference_once() {
        let labels_a = m(&[("k1", "layer:motd"), ("r", "rootfs")]);
        let labels_b = m(&[("k2", "layer:motd"), ("r", "rootfs"), ("k3", "layer:new")]);
        let none = Detail::new();
        let img_a = ins(json!({"layers": ["k1"], "rootfs": "r", "epoch": 1}));
        let img_b = ins(json!({"layers": ["k2", "k3"], "rootfs": "r", "epoch": 1}));
        let r = reasons(
            &Side {
                inputs: &img_a,
                detail: &none,
                labels: &labels_a,
            },
            &Side {
                inputs: &img_b,
                detail: &none,
                labels: &labels_b,
            },
        );
        assert_eq!(r, ["inputs layer:motd changed", "layer:new added"]);

        let la = ins(
            json!({"layer": {"name": "motd", "kind": "files", "to": "/", "content": "a"}, "epoch": 1}),
        );
        let lb = ins(
            json!({"layer": {"name": "motd", "kind": "files", "to": "/", "content": "b"}, "epoch": 2}),
        );
        let da: Detail = [(
            "content".to_string(),
            m(&[("etc", "dir"), ("etc/motd", "aa"), ("etc/old", "cc")]),
        )]
        .into();
        let db: Detail = [(
            "content".to_string(),
            m(&[("etc", "dir"), ("etc/motd", "bb"), ("etc/new", "dd")]),
        )]
        .into();
        let r = reasons(
            &Side {
                inputs: &la,
                detail: &da,
                labels: &labels_a,
            },
            &Side {
                inputs: &lb,
                detail: &db,
                labels: &labels_b,
            },
        );
        assert_eq!(
            r,
            [
                "epoch 1 -> 2",
                "file etc/motd changed",
                "file etc/new added",
                "file etc/old removed"
            ]
        );
    }

    #[test]
    fn wheels_debs_and_apt_inputs_are_named_with_versions() {
        let none = BTreeMap::new();
        let pa = ins(json!({"layer": {"name": "s", "kind": "pip", "content": "a"}}));
        let pb = ins(json!({"layer": {"name": "s", "kind": "pip", "content": "b"}}));
        let da: Detail = [(
            "content".to_string(),
            m(&[("twisted", "24.10.0 aaaa"), ("six", "1 x")]),
        )]
        .into();
        let db: Detail = [(
            "content".to_string(),
            m(&[("twisted", "25.5.0 bbbb"), ("six", "1 y")]),
        )]
        .into();
        let r = reasons(
            &Side {
                inputs: &pa,
                detail: &da,
                labels: &none,
            },
            &Side {
                inputs: &pb,
                detail: &db,
                labels: &none,
            },
        );
        assert_eq!(
            r,
            [
                "wheel six 1: sha256 x -> y",
                "wheel twisted 24.10.0 -> 25.5.0"
            ]
        );

        let ra = ins(json!({"debs": "h1", "packages": {"": ["a", "nginx-light"]}}));
        let rb = ins(json!({"debs": "h2", "packages": {"": ["a", "nginx"]}}));
        let da: Detail = [(
            "debs".to_string(),
            m(&[("nginx-light", "1.2 s"), ("libc6", "2.41-1 s")]),
        )]
        .into();
        let db: Detail = [(
            "debs".to_string(),
            m(&[("nginx", "1.2 t"), ("libc6", "2.41-2 s")]),
        )]
        .into();
        let r = reasons(
            &Side {
                inputs: &ra,
                detail: &da,
                labels: &none,
            },
            &Side {
                inputs: &rb,
                detail: &db,
                labels: &none,
            },
        );
        assert_eq!(
            r,
            [
                "deb libc6 2.41-1 -> 2.41-2",
                "deb nginx 1.2 added",
                "deb nginx-light 1.2 removed",
                "apt input nginx added",
                "apt input nginx-light removed"
            ]
        );
        assert!(
            reasons(
                &Side {
                    inputs: &ra,
                    detail: &da,
                    labels: &none
                },
                &Side {
                    inputs: &ra,
                    detail: &da,
                    labels: &none
                }
            )
            .is_empty()
        );
    }
}
