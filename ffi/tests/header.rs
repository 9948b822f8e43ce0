//! `include/natter.h` must be exactly what cbindgen generates from this crate, and it must
//! compile as C99 and C++17 with every warning an error.
//! `NATTER_BLESS=1 cargo test -p natter-ffi --test header` (or `make header`) rewrites it.

use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

fn generate() -> String {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).unwrap();
    let mut out = Vec::new();
    cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header")
        .write(&mut out);
    String::from_utf8(out).unwrap()
}

#[test]
fn checked_in_header_is_current() {
    let path = root().join("include/natter.h");
    let fresh = generate();
    if std::env::var_os("NATTER_BLESS").is_some() {
        std::fs::write(&path, &fresh).unwrap();
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        current == fresh,
        "include/natter.h is stale: run `make header` and commit it"
    );
}

#[test]
fn header_compiles_as_c_and_cpp() {
    let dir = std::env::temp_dir().join(format!("natter-header-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let c = dir.join("t.c");
    std::fs::write(
        &c,
        "#include \"natter.h\"\nint main(void) { return natter_abi_version() == 0; }\n",
    )
    .unwrap();
    let include = root().join("include");
    for (compiler, std, file) in [("cc", "-std=c99", &c), ("c++", "-std=c++17", &c)] {
        let mut cmd = Command::new(compiler);
        if compiler == "c++" {
            cmd.args(["-x", "c++"]);
        }
        let status = cmd
            .args([
                std,
                "-Wall",
                "-Wextra",
                "-Wpedantic",
                "-Werror",
                "-fsyntax-only",
                "-I",
            ])
            .arg(&include)
            .arg(file)
            .status()
            .unwrap_or_else(|e| panic!("{compiler} runs: {e}"));
        assert!(
            status.success(),
            "natter.h does not compile with {compiler} {std}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Each `EXPECT(natter_f(...), NATTER_R)` of the C tests, as (f, R).
fn expectations(source: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = source;
    while let Some(i) = rest.find("EXPECT(") {
        rest = &rest[i + "EXPECT(".len()..];
        // The two top-level arguments, up to the closing parenthesis.
        let (mut depth, mut in_string, mut escaped, mut comma, mut end) =
            (0, false, false, None, None);
        for (j, ch) in rest.char_indices() {
            if in_string {
                match (escaped, ch) {
                    (true, _) => escaped = false,
                    (false, '\\') => escaped = true,
                    (false, '"') => in_string = false,
                    _ => {}
                }
                continue;
            }
            match ch {
                '"' => in_string = true,
                '(' => depth += 1,
                ')' if depth == 0 => {
                    end = Some(j);
                    break;
                }
                ')' => depth -= 1,
                ',' if depth == 0 => comma = Some(j),
                _ => {}
            }
        }
        let (Some(comma), Some(end)) = (comma, end) else {
            continue;
        };
        let call = rest[..comma].trim();
        let want = rest[comma + 1..end].trim();
        if let (Some(f), true) = (
            call.strip_prefix("natter_")
                .and_then(|c| c.split('(').next()),
            want.starts_with("NATTER_") && want != "NATTER_OK",
        ) {
            out.push((format!("natter_{f}"), want.to_string()));
        }
    }
    out
}

/// The documentation comment natter.h gives function `f`.
fn doc_of<'a>(header: &'a str, f: &str) -> Option<&'a str> {
    let decl = header
        .match_indices(&format!(" {f}("))
        .chain(header.match_indices(&format!("*{f}(")))
        .map(|(i, _)| i)
        .next()?;
    let before = &header[..decl];
    let start = before.rfind("/**")?;
    Some(&before[start..])
}

/// Every result the C tests see a function return is in that function's documented list
/// (issue 16: `SIZE_MAX` counts and `encoder_complexity` 999 gave results the header did not
/// list). Generic results every function may give are documented once at the top.
#[test]
fn every_result_a_function_returns_is_documented() {
    let header = std::fs::read_to_string(root().join("include/natter.h")).unwrap();
    let everywhere = ["NATTER_PANIC"];
    let mut missing = Vec::new();
    let mut checked = 0;
    for entry in std::fs::read_dir(root().join("ffi/tests/c")).unwrap() {
        let path = entry.unwrap().path();
        let source = std::fs::read_to_string(&path).unwrap();
        for (f, want) in expectations(&source) {
            let Some(doc) = doc_of(&header, &f) else {
                continue;
            };
            checked += 1;
            if !everywhere.contains(&want.as_str()) && !doc.contains(&want) {
                missing.push(format!("{f} returns {want} ({})", path.display()));
            }
        }
    }
    missing.sort();
    missing.dedup();
    assert!(checked > 80, "only {checked} expectations found");
    assert!(
        missing.is_empty(),
        "results missing from the functions' documentation:\n{}",
        missing.join("\n")
    );
}
