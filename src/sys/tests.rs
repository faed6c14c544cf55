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

#[test]
fn unsafe_code_lives_where_architecture_md_says() {
    let arch = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let section = arch
        .split("## Unsafe code")
        .nth(1)
        .expect("ARCHITECTURE.md has an \"Unsafe code\" section");
    let section = section.split("\n## ").next().unwrap();
    let mut with_unsafe = Vec::new();
    for (path, text) in sources() {
        let uses = code_lines(&text).any(|l| {
            l.contains("unsafe {")
                || l.contains("unsafe fn")
                || l.contains("unsafe impl")
                || l.contains("#![allow(unsafe_code)]")
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
    let arch = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let locks = arch
        .split("## Locks")
        .nth(1)
        .expect("ARCHITECTURE.md has a \"Locks\" section")
        .split("\n## ")
        .next()
        .unwrap()
        .to_string();
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
