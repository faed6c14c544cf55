//! The README and the crate docs carry the same Python → Rust table and "not yet" list.

use std::path::Path;

/// From the table's header row to the next `## ` heading (or the end), trailing blank
/// lines removed; `prefix` is stripped from every line first (`//!` in `lib.rs`).
fn python_section(text: &str, prefix: &str) -> Vec<String> {
    let lines: Vec<String> = text
        .lines()
        .filter_map(|l| {
            let l = l.strip_prefix(prefix)?;
            let l = if prefix.is_empty() {
                l
            } else {
                l.strip_prefix(' ').unwrap_or(l)
            };
            Some(l.to_string())
        })
        .collect();
    let start = lines
        .iter()
        .position(|l| l == "| Python | multiproc |")
        .expect("no Python → Rust table");
    let mut section: Vec<String> = lines[start..]
        .iter()
        .take_while(|l| !l.starts_with("## "))
        .cloned()
        .collect();
    while section.last().is_some_and(|l| l.trim().is_empty()) {
        section.pop();
    }
    section
}

#[test]
fn readme_and_crate_docs_share_the_python_table() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let lib = std::fs::read_to_string(root.join("src/lib.rs")).unwrap();
    let a = python_section(&readme, "");
    let b = python_section(&lib, "//!");
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_eq!(x, y, "line {i} of the Python → Rust section differs");
    }
    assert_eq!(
        a.len(),
        b.len(),
        "the README and lib.rs sections differ in length"
    );
    let text = a.join("\n");
    assert!(text.contains("Not yet in multiproc"));
    for missing in ["ShareableList", "interrupt", "ThreadPool", "macOS"] {
        assert!(text.contains(missing), "the not-yet list lacks {missing}");
    }
}
