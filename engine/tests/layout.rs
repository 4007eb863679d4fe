//! The engine's folders depend only on the folders below them, and no two
//! files depend on each other, even through others.
//!
//! The order is the numbered list in `src/lib.rs`'s "Where things are"
//! section, so the docs and the code cannot drift apart. A dependency is
//! any `crate::folder::...` or `super::file::...` path outside a comment.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The folders in dependency order, bottom first, from lib.rs's docs.
fn documented_order() -> Vec<String> {
    let lib = fs::read_to_string(src().join("lib.rs")).expect("lib.rs");
    lib.lines()
        .filter_map(|line| {
            let item = line.strip_prefix("//!")?.trim_start();
            let (number, rest) = item.split_once(". [`")?;
            number.parse::<usize>().ok()?;
            Some(rest.split_once('`')?.0.to_owned())
        })
        .collect()
}

/// `folder/file` for every source file of the library outside lib.rs; a
/// module split into a folder of its own (`http2/connection/`) counts as
/// one file, its files' text together (their `super::` paths name items
/// of the module or, from its `mod.rs`, files beside it).
fn files() -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for folder in fs::read_dir(src()).expect("src") {
        let folder = folder.expect("entry").path();
        if !folder.is_dir() || folder.ends_with("bin") {
            continue;
        }
        let name = folder
            .file_name()
            .expect("a name")
            .to_string_lossy()
            .into_owned();
        for file in fs::read_dir(&folder).expect("folder") {
            let file = file.expect("entry").path();
            let stem = file
                .file_stem()
                .expect("a name")
                .to_string_lossy()
                .into_owned();
            let text = if file.is_dir() {
                let mut parts: Vec<PathBuf> = fs::read_dir(&file)
                    .expect("module folder")
                    .map(|e| e.expect("entry").path())
                    .collect();
                parts.sort();
                parts
                    .iter()
                    .map(|p| fs::read_to_string(p).expect("read"))
                    .collect::<Vec<_>>()
                    .join("\n")
            } else {
                fs::read_to_string(&file).expect("read")
            };
            out.push((name.clone(), stem, text));
        }
    }
    out
}

fn ident(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    &text[..end]
}

/// The first path segment of each item of a `{a::b, c}` group, or the
/// segment itself.
fn segments(after: &str) -> Vec<String> {
    let Some(group) = after.strip_prefix('{') else {
        return vec![ident(after).to_owned()];
    };
    let mut depth = 0;
    let mut items = vec![String::new()];
    for c in group.chars() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => items.push(String::new()),
            _ => items.last_mut().expect("one item").push(c),
        }
    }
    items
        .iter()
        .map(|i| ident(i.trim()).to_owned())
        .filter(|i| !i.is_empty() && i != "self")
        .collect()
}

/// What one file uses: (folder, file within it if known).
fn uses(folder: &str, text: &str) -> BTreeSet<(String, Option<String>)> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            let target = ident(rest);
            let after = &rest[target.len()..];
            let files = after.strip_prefix("::").map(segments).unwrap_or_default();
            if files.is_empty() {
                out.insert((target.to_owned(), None));
            }
            for f in files {
                out.insert((target.to_owned(), Some(f)));
            }
        }
        for (i, _) in code.match_indices("super::") {
            if code[..i].ends_with("::") {
                continue;
            }
            for f in segments(&code[i + "super::".len()..]) {
                out.insert((folder.to_owned(), Some(f)));
            }
        }
    }
    out
}

#[test]
fn folders_use_only_the_folders_below_them() {
    let order = documented_order();
    assert!(order.len() >= 8, "lib.rs lists the folders: {order:?}");
    let rank = |f: &str| order.iter().position(|o| o == f);
    let mut wrong = Vec::new();
    for (folder, file, text) in files() {
        let own = rank(&folder).unwrap_or_else(|| panic!("{folder}/ is not in lib.rs's list"));
        for (target, _) in uses(&folder, &text) {
            match rank(&target) {
                Some(r) if r > own => wrong.push(format!("{folder}/{file}.rs uses {target}/")),
                _ => {}
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "upward dependencies:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn no_two_files_depend_on_each_other() {
    let all = files();
    let known: BTreeSet<(String, String)> =
        all.iter().map(|(d, f, _)| (d.clone(), f.clone())).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (folder, file, text) in &all {
        let me = format!("{folder}/{file}");
        let edges = graph.entry(me.clone()).or_default();
        for (target, target_file) in uses(folder, text) {
            if let Some(t) = target_file {
                if known.contains(&(target.clone(), t.clone())) {
                    let dep = format!("{target}/{t}");
                    if dep != me {
                        edges.insert(dep);
                    }
                }
            }
        }
    }
    // A depth-first search for a back edge names one cycle.
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == n) {
            let mut cycle = path[i..].to_vec();
            cycle.push(n.to_owned());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_owned());
        for m in graph.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for n in graph.keys() {
        if let Some(cycle) = visit(n, &graph, &mut Vec::new(), &mut done) {
            panic!("files in a cycle: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn the_parser_sees_grouped_and_relative_paths() {
    let found = uses(
        "upstream",
        "use crate::forward::{splice::Splice, retry};\nuse super::pool::Pool; // crate::control\nlet x = crate::config::Settings::default();",
    );
    let want: BTreeSet<(String, Option<String>)> = [
        ("forward", Some("splice")),
        ("forward", Some("retry")),
        ("upstream", Some("pool")),
        ("config", Some("Settings")),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_owned(), b.map(str::to_owned)))
    .collect();
    assert_eq!(found, want);
}
