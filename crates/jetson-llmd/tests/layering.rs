//! The subsystems import each other in one direction only: no cycles, and the shared records
//! (state.json, keepalive.json, preload.json: `records/`) import nothing but the leaves below
//! them. Read from the source, so a new `use crate::...` that closes a cycle fails here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// `crate::<name>` references in non-test code, per top-level module of src/.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).expect("ls").flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path.strip_prefix(&src).expect("under src");
            let top = rel.components().next().expect("a component").as_os_str().to_string_lossy().trim_end_matches(".rs").to_string();
            let name = rel.file_name().expect("name").to_string_lossy().to_string();
            if matches!(top.as_str(), "cli" | "main" | "lib" | "testing") || name == "tests.rs" || rel.components().any(|c| c.as_os_str() == "tests") || path.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read");
            // Test modules sit at the end of a file; what they import is not the layering.
            let code = text.split("\n#[cfg(test)]").next().unwrap_or_default();
            let deps = graph.entry(top.clone()).or_default();
            for (i, _) in code.match_indices("crate::") {
                let dep: String = code[i + 7..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                if !dep.is_empty() && dep != top {
                    deps.insert(dep);
                }
            }
        }
    }
    graph
}

#[test]
fn the_subsystems_import_each_other_without_cycles() {
    let g = imports();
    assert!(g.contains_key("supervisor") && g.contains_key("records"), "{g:?}");
    // Depth-first search for a back edge.
    fn visit<'a>(n: &'a str, g: &'a BTreeMap<String, BTreeSet<String>>, path: &mut Vec<&'a str>, done: &mut BTreeSet<&'a str>) {
        if done.contains(n) {
            return;
        }
        if let Some(at) = path.iter().position(|p| *p == n) {
            panic!("import cycle: {} -> {n}", path[at..].join(" -> "));
        }
        path.push(n);
        for d in g.get(n).into_iter().flatten() {
            visit(d, g, path, done);
        }
        path.pop();
        done.insert(n);
    }
    let mut done = BTreeSet::new();
    for n in g.keys() {
        visit(n, &g, &mut Vec::new(), &mut done);
    }
}

#[test]
fn the_shared_records_are_a_leaf() {
    let g = imports();
    let allowed: BTreeSet<String> = ["conf", "failure", "host", "text"].into_iter().map(String::from).collect();
    let records = &g["records"];
    assert!(records.is_subset(&allowed), "records/ imports {:?}; only {allowed:?} may sit below it", records.difference(&allowed).collect::<Vec<_>>());
    for leaf in ["text", "host", "failure"] {
        let deps = g.get(leaf).cloned().unwrap_or_default();
        assert!(deps.iter().all(|d| d == "text"), "{leaf} imports {deps:?}");
    }
}
