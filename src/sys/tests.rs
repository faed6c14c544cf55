//! ARCHITECTURE.md's promises about the whole crate's source: where unsafe code lives, and
//! that every static and thread-local is documented (ARCHITECTURE.md, "Locks";
//! src/spawn/README.md, what each does at fork).

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The library's source files (unit-test files excluded), as paths relative to `src/`.
fn sources() -> Vec<(String, String)> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<(String, String)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, base, out);
            } else if p.extension().is_some_and(|x| x == "rs")
                && p.file_name().is_some_and(|n| n != "tests.rs")
            {
                let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
                out.push((rel, std::fs::read_to_string(&p).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    let src = root().join("src");
    walk(&src, &src, &mut out);
    out.sort();
    out
}

/// The code of `text` without comments (line comments only: the crate uses no others).
fn code_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(|l| l.find("//").map_or(l, |i| &l[..i]))
        .filter(|l| !l.trim().is_empty())
}

/// The text of ARCHITECTURE.md's section `## {title}`, up to the next section.
fn architecture_section(title: &str) -> String {
    let arch = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let section = arch
        .split(&format!("## {title}"))
        .nth(1)
        .unwrap_or_else(|| panic!("ARCHITECTURE.md has no \"{title}\" section"));
    section.split("\n## ").next().unwrap().to_string()
}

#[test]
fn unsafe_code_lives_where_architecture_md_says() {
    let section = architecture_section("Unsafe code");
    let mut with_unsafe = Vec::new();
    for (path, text) in sources() {
        let uses = code_lines(&text).any(|l| {
            l.contains("unsafe {")
                || l.contains("unsafe fn")
                || l.contains("unsafe impl")
                || l.contains("#![allow(unsafe_code)]")
                // Code before `main` is unsafe too, without an `unsafe` block.
                || l.contains("ctor::ctor(unsafe)")
        });
        if uses {
            with_unsafe.push(path);
        }
    }
    assert!(
        with_unsafe.len() >= 5,
        "the scan found too little: {with_unsafe:?}"
    );
    for path in &with_unsafe {
        assert!(
            section.contains(&format!("`{path}`")),
            "src/{path} has unsafe code but ARCHITECTURE.md's \"Unsafe code\" does not list it"
        );
    }
    for listed in section.split('`').skip(1).step_by(2) {
        if listed.ends_with(".rs") {
            assert!(
                with_unsafe.iter().any(|p| p == listed),
                "ARCHITECTURE.md lists {listed} as holding unsafe code, but it holds none"
            );
        }
    }
}

/// `(file, name, is_thread_local, type)` of every static in the library.
fn statics() -> Vec<(String, String, bool, String)> {
    let mut out = Vec::new();
    for (path, text) in sources() {
        let mut in_tls = false;
        let mut depth = 0i32;
        for line in code_lines(&text) {
            if line.contains("thread_local!") {
                in_tls = true;
                depth = 0;
            }
            let t = line.trim_start();
            let t = t
                .strip_prefix("pub(crate) ")
                .or_else(|| t.strip_prefix("pub "))
                .unwrap_or(t);
            if let Some(rest) = t.strip_prefix("static ") {
                if let Some((name, ty)) = rest.split_once(':') {
                    out.push((
                        path.clone(),
                        name.trim().to_string(),
                        in_tls,
                        ty.to_string(),
                    ));
                }
            }
            if in_tls {
                depth += line.matches('{').count() as i32 - line.matches('}').count() as i32;
                if depth <= 0 && line.contains('}') {
                    in_tls = false;
                }
            }
        }
    }
    out
}

#[test]
fn every_static_and_thread_local_is_documented() {
    let locks = architecture_section("Locks");
    let fork = std::fs::read_to_string(root().join("src/spawn/README.md")).unwrap();
    let all = statics();
    assert!(all.len() >= 10, "the scan found too little: {all:?}");
    assert!(all.iter().any(|s| s.2), "the scan found no thread-local");
    for (path, name, tls, ty) in &all {
        assert!(
            fork.contains(name.as_str()),
            "src/{path}: {name} is not in src/spawn/README.md's list of statics"
        );
        let is_lock = ["Mutex", "RwLock", "Once", "Condvar"]
            .iter()
            .any(|l| ty.contains(l));
        if *tls || is_lock {
            assert!(
                locks.contains(name.as_str()),
                "src/{path}: {name} is not in ARCHITECTURE.md's \"Locks\""
            );
        }
    }
}

/// The crate's layers, bottom first (ARCHITECTURE.md, "Import order"): a module may name
/// modules of its own layer or below, never above. Modules of one layer do not form a chain
/// (`pool`, `queue` and `mpi`, the pool's scale-out backend, are peers; so are `shm`, `sync` and
/// `manager`).
const LAYERS: &[&[&str]] = &[
    &["wait"],
    &["sys"],
    &["error", "context"],
    &["fdreg"],
    &["codec"],
    &["connection"],
    &["task"],
    &["spawn"],
    &["process"],
    &["pool", "queue", "mpi"],
    &["shm", "sync", "manager"],
    &["hooks", "__chaos"],
];

/// The layer of a crate-root name: a module, or an item `lib.rs` re-exports from one.
fn layer_of(name: &str, reexports: &[(String, String)]) -> Option<usize> {
    let module = reexports
        .iter()
        .find(|(item, _)| item == name)
        .map_or(name, |(_, m)| m.as_str());
    LAYERS.iter().position(|l| l.contains(&module))
}

/// `(item, module)` for every name `lib.rs` re-exports with `pub use module::{…}`.
fn root_reexports() -> Vec<(String, String)> {
    let lib = std::fs::read_to_string(root().join("src/lib.rs")).unwrap();
    let mut out = Vec::new();
    for stmt in lib.split(';') {
        let Some(rest) = stmt.trim_start().strip_prefix("pub use ") else {
            continue;
        };
        let Some((module, items)) = rest.split_once("::") else {
            continue;
        };
        for item in items.split(|c: char| !(c.is_alphanumeric() || c == '_')) {
            if !item.is_empty() {
                out.push((item.to_string(), module.trim().to_string()));
            }
        }
    }
    out
}

/// The first identifier at the start of `s`.
fn ident(s: &str) -> &str {
    let s = s.trim_start();
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// Every top-level name a `crate::` path in `code` starts with (`crate::a::b` gives `a`;
/// `crate::{a::b, C}` gives `a` and `C`).
fn crate_paths(code: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for (i, m) in code.match_indices("crate::") {
        // Not the tail of `$crate::` or of another identifier.
        if code[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        let tail = &code[i + m.len()..];
        if let Some(group) = tail.strip_prefix('{') {
            let (mut depth, mut start) = (0, 0);
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        out.push(ident(&group[start..j]));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.push(ident(&group[start..j]));
                        start = j + 1;
                    }
                    _ => {}
                }
            }
        } else {
            out.push(ident(tail));
        }
    }
    out.retain(|n| !n.is_empty());
    out
}

#[test]
fn imports_only_go_down_the_layers() {
    let reexports = root_reexports();
    assert!(
        reexports
            .iter()
            .any(|(i, m)| i == "Process" && m == "process"),
        "the scan of lib.rs found no re-exports: {reexports:?}"
    );
    let mut seen = 0;
    let mut upward = Vec::new();
    for (path, text) in sources() {
        if path == "lib.rs" {
            continue; // the crate root sits above every layer
        }
        let module = path
            .split('/')
            .next()
            .unwrap()
            .trim_end_matches(".rs")
            .to_string();
        let Some(mine) = layer_of(&module, &[]) else {
            panic!("src/{path}: module `{module}` has no layer: add it to LAYERS and to ARCHITECTURE.md's \"Import order\"");
        };
        let code: Vec<&str> = code_lines(&text).collect();
        let code = code.join("\n");
        {
            for name in crate_paths(&code) {
                seen += 1;
                let Some(theirs) = layer_of(name, &reexports) else {
                    panic!("src/{path}: `crate::{name}` is neither a layered module nor a re-export of one");
                };
                if theirs > mine {
                    upward.push(format!(
                        "src/{path} (layer {mine}, `{module}`) names `crate::{name}` (layer {theirs})"
                    ));
                }
            }
        }
    }
    assert!(seen > 100, "the scan found too few `crate::` paths: {seen}");
    assert!(
        upward.is_empty(),
        "upward imports (invert each dependency; ARCHITECTURE.md, \"Import order\"):\n{}",
        upward.join("\n")
    );
}

#[test]
fn architecture_md_draws_the_same_layers() {
    let section = architecture_section("Import order");
    let diagram = section
        .split("```")
        .nth(1)
        .expect("\"Import order\" draws the layers in a code block");
    let drawn: Vec<&str> = diagram
        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| layer_of(w, &[]).is_some())
        .collect();
    let expected: Vec<&str> = LAYERS.iter().flat_map(|l| l.iter().copied()).collect();
    assert_eq!(
        drawn, expected,
        "ARCHITECTURE.md's diagram and LAYERS differ"
    );
}

#[test]
fn the_import_scan_sees_an_upward_path() {
    assert_eq!(
        crate_paths(
            "use crate::process::{ChildShared, at_exit}; crate::Process::<()>::x; $crate::no"
        ),
        vec!["process", "Process"]
    );
    let reexports = root_reexports();
    assert!(layer_of("Process", &reexports) > layer_of("spawn", &[]));
    assert!(layer_of("Error", &reexports) < layer_of("fdreg", &[]));
}
