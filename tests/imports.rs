//! The module graph has no circle, and the pure modules do no I/O.
//!
//! Reads `src/` as text: each file is a module (`src/a/b.rs` and
//! `src/a/b/mod.rs` are `a::b`); a module uses another where its code
//! names `crate::X` or `super::X` (in a `use` line or inline), taken to the
//! longest prefix that is a module. Test code (`#[cfg(test)]` and what
//! follows it in a file, and modules declared under it) is not counted:
//! tests may reach anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `a::b` for `src/a/b.rs` or `src/a/b/mod.rs`; `crate` for main.rs.
fn module_of(p: &Path) -> String {
    let rel = p.strip_prefix(src()).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|l| l == "mod") {
        parts.pop();
    }
    if parts == ["main"] {
        return "crate".into();
    }
    parts.join("::")
}

/// The code of a file without its test part.
fn non_test_code(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with("#[cfg(test)]") {
            break;
        }
        let code = line.split("//").next().unwrap_or("");
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// Modules declared under `#[cfg(test)]` (`#[cfg(test)] mod x;`).
fn test_modules(module: &str, text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut v = Vec::new();
    for w in lines.windows(2) {
        if w[0].trim() == "#[cfg(test)]"
            && let Some(name) = w[1]
                .trim()
                .strip_prefix("mod ")
                .and_then(|r| r.strip_suffix(';'))
        {
            v.push(if module == "crate" {
                name.to_string()
            } else {
                format!("{module}::{name}")
            });
        }
    }
    v
}

struct Graph {
    modules: BTreeSet<String>,
    edges: BTreeMap<String, BTreeSet<String>>,
    code: BTreeMap<String, String>,
}

fn graph() -> Graph {
    let mut paths = Vec::new();
    files(&src(), &mut paths);
    let mut texts = BTreeMap::new();
    for p in &paths {
        texts.insert(module_of(p), std::fs::read_to_string(p).unwrap());
    }
    let mut tests = BTreeSet::new();
    for (m, t) in &texts {
        tests.extend(test_modules(m, t));
    }
    let modules: BTreeSet<String> = texts
        .keys()
        .filter(|m| !tests.contains(*m))
        .cloned()
        .collect();
    let resolve = |segments: &[&str]| -> Option<String> {
        (1..=segments.len())
            .rev()
            .map(|n| segments[..n].join("::"))
            .find(|m| modules.contains(m))
    };
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut code = BTreeMap::new();
    for m in &modules {
        let text = non_test_code(&texts[m]);
        let parent: Vec<&str> = if m == "crate" {
            vec![]
        } else {
            let mut p: Vec<&str> = m.split("::").collect();
            p.pop();
            p
        };
        for (prefix, base) in [("crate::", vec![]), ("super::", parent.clone())] {
            for (i, _) in text.match_indices(prefix) {
                if i > 0 && text.as_bytes()[i - 1].is_ascii_alphanumeric() {
                    continue;
                }
                let rest: String = text[i + prefix.len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                    .collect();
                let mut segs = base.clone();
                segs.extend(rest.split("::").filter(|s| !s.is_empty()));
                if let Some(t) = resolve(&segs)
                    && &t != m
                    && !m.starts_with(&format!("{t}::"))
                {
                    edges.entry(m.clone()).or_default().insert(t);
                }
            }
        }
        code.insert(m.clone(), text);
    }
    Graph {
        modules,
        edges,
        code,
    }
}

/// Every circle of `edges`, each found once (from its smallest module).
fn circles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut found = Vec::new();
    for start in edges.keys() {
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        while let Some((at, path)) = stack.pop() {
            for next in edges.get(&at).into_iter().flatten() {
                if next == start {
                    found.push(path.join(" -> ") + " -> " + start);
                } else if !path.contains(next) && next > start {
                    let mut p = path.clone();
                    p.push(next.clone());
                    stack.push((next.clone(), p));
                }
            }
        }
    }
    found
}

#[test]
fn no_module_imports_in_a_circle() {
    let g = graph();
    assert!(g.modules.len() > 20, "read the modules: {:?}", g.modules);
    // A module may use its own submodules and they may use it (`super::`):
    // a circle is one between modules neither of which contains the other
    // (the graph has no edge between them).
    let circles = circles(&g.edges);
    assert!(
        circles.is_empty(),
        "import circles:\n{}",
        circles.join("\n")
    );
}

#[test]
fn no_top_level_module_imports_in_a_circle() {
    // The same, with each module taken as its top-level one (`lock::model`
    // as `lock`): the crate's parts form no circle either.
    let g = graph();
    let top = |m: &str| m.split("::").next().unwrap_or(m).to_string();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, ts) in &g.edges {
        for t in ts {
            if top(m) != top(t) && m != "crate" {
                edges.entry(top(m)).or_default().insert(top(t));
            }
        }
    }
    let circles = circles(&edges);
    assert!(
        circles.is_empty(),
        "import circles between top-level modules:\n{}",
        circles.join("\n")
    );
}

#[test]
fn pure_modules_do_no_io() {
    let g = graph();
    for m in ["plan", "lock::model", "stages::fat"] {
        let code = &g.code[m];
        for io in [
            "std::fs",
            "File::",
            "std::process",
            "Command",
            "std::net",
            "reqwest",
            "std::env",
            "Instant::now",
            "SystemTime",
        ] {
            assert!(!code.contains(io), "pure module {m} uses {io}");
        }
    }
}

/// Panics naming the first module outside `home` whose code has `needle`.
fn only_in(home: &str, needle: &str, why: &str) {
    let g = graph();
    for (m, code) in &g.code {
        if m == home || m.starts_with(&format!("{home}::")) {
            continue;
        }
        assert!(!code.contains(needle), "{m} uses {needle}: {why}");
    }
}

#[test]
fn processes_are_spawned_only_in_tools() {
    only_in("tools", "Command::new", "spawning belongs in src/tools");
}

#[test]
fn only_the_cli_draws_progress() {
    only_in(
        "cli",
        "indicatif",
        "library code reports through crate::report and the CLI draws",
    );
}
