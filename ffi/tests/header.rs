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
