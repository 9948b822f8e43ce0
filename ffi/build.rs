//! Gives the shared library its SONAME on Linux: `libnatter.so.0.MINOR` while the ABI major is
//! 0 (every minor may break the ABI), `libnatter.so.MAJOR` from 1.0 on. The numbers are the
//! `NATTER_ABI_*` constants of `src/lib.rs` (the header's), read here so they live in one place.
//! On Linux it also builds `src/alsa_log.c`, which routes ALSA's error messages into the
//! library's logs.

fn abi(src: &str, name: &str) -> u32 {
    let prefix = format!("pub const {name}: u32 = ");
    src.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.trim_end_matches(';').trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not found in src/lib.rs"))
}

fn main() {
    println!("cargo:rerun-if-changed=src/lib.rs");
    let src = std::fs::read_to_string("src/lib.rs").expect("reading src/lib.rs");
    let (major, minor) = (abi(&src, "NATTER_ABI_MAJOR"), abi(&src, "NATTER_ABI_MINOR"));
    let soname = if major == 0 {
        format!("libnatter.so.0.{minor}")
    } else {
        format!("libnatter.so.{major}")
    };
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,{soname}");
        // ALSA's messages into the library's logs (src/alsa_log.c, src/log.rs).
        println!("cargo:rerun-if-changed=src/alsa_log.c");
        cc::Build::new()
            .file("src/alsa_log.c")
            .warnings(true)
            .extra_warnings(true)
            .compile("natter_alsa_log");
        println!("cargo:rustc-link-lib=asound");
    }
}
