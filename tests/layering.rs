//! The layering that `src/lib.rs` states is the one the code has: every
//! `crate::` path in a module's source names a module on a line below its
//! own in lib.rs's "Layers" list, and every module is on the list.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers of lib.rs, from the top: line `n.` of its numbered list,
/// each with the modules named before the colon.
fn layers(lib: &str) -> BTreeMap<String, usize> {
    let mut rank = BTreeMap::new();
    let mut in_list = false;
    for line in lib.lines() {
        let Some(doc) = line.strip_prefix("//!") else { continue };
        let doc = doc.trim();
        if doc.starts_with("# ") {
            in_list = doc == "# Layers";
            continue;
        }
        if !in_list {
            continue;
        }
        let Some((number, rest)) = doc.split_once(". ") else {
            continue;
        };
        let Ok(number) = number.parse::<usize>() else { continue };
        let names = rest.split(':').next().unwrap_or_default();
        for name in names.split(',') {
            let name = name.trim().trim_matches('`');
            assert!(
                !name.is_empty(),
                "layer {number} of src/lib.rs names no module: {doc:?}"
            );
            assert!(rank.insert(name.to_owned(), number).is_none(), "{name} is listed twice");
        }
    }
    assert!(!rank.is_empty(), "src/lib.rs has no numbered list under `# Layers`");
    rank
}

/// Source without comments (`//` to the end of the line, `/* */`) or
/// string literals, so that a doc link or a message is not an import.
fn code(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut chars = source.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut last = ' ';
                for c in chars.by_ref() {
                    if last == '*' && c == '/' {
                        break;
                    }
                    last = c;
                }
            }
            // A raw string: r#"…"#, with any number of #.
            'r' if chars.peek() == Some(&'#') => {
                let mut hashes = 0;
                while chars.peek() == Some(&'#') {
                    chars.next();
                    hashes += 1;
                }
                if chars.peek() != Some(&'"') {
                    out.push('r');
                    continue;
                }
                chars.next();
                let closing: String = std::iter::once('"').chain(std::iter::repeat_n('#', hashes)).collect();
                let mut body = String::new();
                for c in chars.by_ref() {
                    body.push(c);
                    if body.ends_with(&closing) {
                        break;
                    }
                }
                out.push_str("\"\"");
            }
            '"' => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    match (escaped, c) {
                        (false, '\\') => escaped = true,
                        (false, '"') => break,
                        _ => escaped = false,
                    }
                }
                out.push_str("\"\"");
            }
            // A char literal such as '"' or '\'' (a lifetime has no
            // closing quote right after its next character, and is kept).
            '\'' => {
                let mut ahead = chars.clone();
                match (ahead.next(), ahead.next()) {
                    (Some('\\'), _) => {
                        chars.next();
                        chars.next();
                        for c in chars.by_ref() {
                            if c == '\'' {
                                break;
                            }
                        }
                    }
                    (Some(_), Some('\'')) => {
                        chars.next();
                        chars.next();
                    }
                    _ => {}
                }
                out.push('\'');
            }
            c => out.push(c),
        }
    }
    out
}

/// The top-level modules that `code` names through `crate::`.
fn imports(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let ident = |s: &str| -> String { s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect() };
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a, b::c, d::{e, f}}`: the first name of each item at
            // depth one.
            let mut depth = 1;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => item_start = true,
                    c if item_start && depth == 1 && !c.is_whitespace() => {
                        found.insert(ident(&group[i..]));
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            found.insert(ident(rest));
        }
    }
    found.remove("");
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn imports_point_down_the_layers_of_lib_rs() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("src/lib.rs");
    let rank = layers(&lib);
    let declared: BTreeSet<String> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod "))
        .map(|m| m.trim_end_matches(';').to_owned())
        .collect();
    let listed: BTreeSet<String> = rank.keys().cloned().collect();
    assert_eq!(
        declared, listed,
        "the modules of src/lib.rs and its `# Layers` list differ"
    );

    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    for file in files {
        let relative = file.strip_prefix(&src).expect("under src");
        let top = relative
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .expect("a name")
            .trim_end_matches(".rs")
            .to_owned();
        // The binaries and lib.rs stand above every module.
        let Some(&own) = rank.get(&top) else { continue };
        let source = std::fs::read_to_string(&file).expect("a source file");
        for module in imports(&code(&source)) {
            if module == top {
                continue;
            }
            match rank.get(&module) {
                Some(&theirs) if theirs > own => {}
                Some(&theirs) => wrong.push(format!(
                    "{} (layer {own}, `{top}`) imports `{module}` (layer {theirs})",
                    relative.display()
                )),
                None => wrong.push(format!("{} imports `{module}`, not in the list", relative.display())),
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports that do not point down the layers of src/lib.rs:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_checker_sees_imports_and_skips_comments_and_strings() {
    let source = r##"
        use crate::{alpha::A, beta, gamma::{x, y}};
        // crate::comment
        /* crate::block */
        let s = "crate::string";
        let raw = r#"crate::raw "quoted""#;
        let c = '"'; let t = crate::delta::f();
        fn g<'a>(x: &'a str) -> crate::epsilon::E { todo!() }
    "##;
    let found: Vec<String> = imports(&code(source)).into_iter().collect();
    assert_eq!(found, ["alpha", "beta", "delta", "epsilon", "gamma"]);
}
