//! The supervisor's folders are layers and imports point one way, down. This reads every
//! source file and refuses a `crate::…` path that reaches a layer above (or beside) its own.

use std::path::Path;

/// Layers from the top; a module may use its own layer and any layer after it, never one
/// before it, and never another module of the same rank.
const LAYERS: &[(&str, u8)] = &[
    ("main", 0),
    ("bin", 0),
    ("cli", 1),
    ("app", 2),
    ("client", 2),
    ("http", 3),
    ("supervise", 4),
    ("ipc", 5),
    ("os", 6),
    ("store", 6),
    ("manifest", 7),
    ("settings", 8),
    ("error", 8),
    ("feed", 8),
];

fn rank(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, r)| *r)
}

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn imports_point_down_the_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    assert!(all.len() > 30, "found only {} files", all.len());
    let mut wrong = Vec::new();
    for path in &all {
        let rel = path.strip_prefix(&src).expect("under src");
        let first = rel.components().next().expect("a component");
        let own = first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if own == "lib" {
            continue;
        }
        let own_rank = rank(&own).unwrap_or_else(|| panic!("{own} is in no layer"));
        let text = std::fs::read_to_string(path).expect("read");
        for (line_no, line) in text.lines().enumerate() {
            let mut rest = line;
            while let Some(i) = rest.find("crate::") {
                let after = &rest[i + "crate::".len()..];
                let target: String = after
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &after[target.len()..];
                if target == own {
                    continue;
                }
                let Some(target_rank) = rank(&target) else {
                    continue;
                };
                if target_rank <= own_rank {
                    wrong.push(format!(
                        "{}:{}: {own} uses crate::{target}",
                        rel.display(),
                        line_no + 1
                    ));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n{}",
        wrong.join("\n")
    );
}
