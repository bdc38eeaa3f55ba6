//! Keeps ARCHITECTURE.md honest: every Rust module of the workspace is named in its code map, in a
//! row that names its crate's folder. (The workspace's doc checks live in its lightest crate.)
mod common;
use common::{root, rust_files as modules};

/// The rows of the "Code map" table.
fn code_map_rows() -> Vec<String> {
    let text = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let start = text.find("## Code map").expect("a Code map section");
    let section = &text[start..];
    let end = section[3..].find("\n## ").map_or(section.len(), |i| i + 3);
    section[..end]
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(String::from)
        .collect()
}

#[test]
fn every_module_is_in_the_code_map() {
    let rows = code_map_rows();
    let mut missing = vec![];
    for krate in ["protocol", "server", "worker"] {
        let src = root().join(krate).join("src");
        let mut files = vec![];
        modules(&src, &mut files);
        let prefix = format!("`{krate}/src/");
        for file in files {
            let rel = file
                .strip_prefix(&src)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            // A file is named by its path (`server/src/startup.rs`) or its path below src/
            // (`store/lease.rs`), or by its file name in a
            // row of its crate's folder; a folder's mod.rs by the folder (`store/`) there too.
            let folder = file
                .parent()
                .filter(|p| *p != src)
                .map(|p| format!("`{}/", p.file_name().unwrap().to_string_lossy()));
            let named = rows.iter().any(|row| {
                row.contains(&format!("`{rel}`"))
                    || row.contains(&format!("`{krate}/src/{rel}`"))
                    || (row.contains(&prefix)
                        && (row.contains(&format!("`{name}`"))
                            || (name == "mod.rs"
                                && folder.as_ref().is_some_and(|f| row.contains(f.as_str())))))
            });
            if !named {
                missing.push(format!("{krate}/src/{rel}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "modules missing from ARCHITECTURE.md's code map: {missing:?}"
    );
}
