//! The layering rule, enforced: `natter-core`, `natter-overlay` and the simulator
//! (`natter-sim`, which `natter-media` uses for its loopback's links) depend on no I/O crate
//! (sockets, event loops, threads runtimes, OS randomness, databases, audio devices), core's
//! and overlay's sources never read the clock or touch the OS; workspace crates depend only on
//! the crates below them; what applications link (`natter`, `natter-ffi`) carries no login
//! server or database. See ARCHITECTURE.md, "Layers".

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

/// Crates that do I/O (or pull the OS in) and must never be reachable from core, overlay or
/// the simulator (nor, for core and overlay, the crates above them).
const FORBIDDEN: &[&str] = &[
    "mio",
    "tokio",
    "async-std",
    "smol",
    "async-io",
    "polling",
    "socket2",
    "nix",
    "getrandom",
    "rustls",
    "hyper",
    "reqwest",
    "ureq",
    "rusqlite",
    "postgres",
    "cpal",
    "alsa",
    "audiopus",
    "natter-transport",
    "natter-media",
    "natter-ffi",
    "natter-cli",
    "natter-sim",
];

/// Allowed workspace arrows: each crate may depend only on crates below it.
const ALLOWED: &[(&str, &[&str])] = &[
    ("natter-core", &[]),
    ("natter-overlay", &["natter-core"]),
    ("natter-transport", &["natter-core", "natter-overlay"]),
    ("natter-media", &["natter-core", "natter-sim"]),
    ("natter-sim", &["natter-core"]),
    ("natter-server", &["natter-core", "natter-transport"]),
    (
        "natter",
        &[
            "natter-core",
            "natter-overlay",
            "natter-transport",
            "natter-media",
            "natter-sim",
        ],
    ),
    (
        "natter-ffi",
        &[
            "natter",
            "natter-core",
            "natter-overlay",
            "natter-transport",
            "natter-media",
            "natter-sim",
        ],
    ),
    (
        "natter-cli",
        &[
            "natter",
            "natter-core",
            "natter-overlay",
            "natter-transport",
            "natter-media",
            "natter-sim",
            "natter-server",
        ],
    ),
];

/// What an application links: the client crate and the C library carry no login server and
/// no server database. (Argon2 is not among them any more: clients stretch the password that
/// wraps the buddy list's key, `natter_core::contacts::envelope`; nor is SQLite: each device
/// keeps its chat history in it, `natter::chat`.)
const SERVER_SIDE: &[&str] = &["postgres", "natter-server"];

fn metadata() -> serde_json::Value {
    let host = String::from_utf8(
        Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
            .arg("-vV")
            .output()
            .expect("rustc runs")
            .stdout,
    )
    .unwrap();
    let triple = host
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("host triple")
        .to_string();
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--filter-platform",
            &triple,
        ])
        .current_dir(workspace_root())
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// `ring` is used by core for its ChaCha20-Poly1305 only (see ARCHITECTURE.md, "Why ring for
/// the data plane"); its `getrandom` dependency serves `ring::rand`, which the source scan below
/// bans. So the walk does not descend into ring.
///
/// `vodozemac` (chat's Olm channels) draws its ratchet keys from the OS through `rand` and
/// `getrandom`, and cannot be seeded: the one documented exception to "no OS randomness" in
/// core (ARCHITECTURE.md, the sans-IO contract; `natter_core::chat::channel`). It does no other
/// I/O, and what the protocol decides never depends on those bytes (the simulator's runs
/// repeat; `overlay/tests/chat_node.rs` checks it). So the walk does not descend into it.
const OPAQUE: &[&str] = &["ring", "vodozemac"];

/// Names of every crate reachable from `root` through normal (non-dev, non-build) edges.
fn normal_closure(meta: &serde_json::Value, root: &str) -> BTreeSet<String> {
    let packages: BTreeMap<String, String> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["id"].as_str().unwrap().to_string(),
                p["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let nodes: BTreeMap<String, &serde_json::Value> = meta["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap().to_string(), n))
        .collect();
    let root_id = packages
        .iter()
        .find(|(_, name)| name.as_str() == root)
        .map(|(id, _)| id.clone())
        .expect("root package");
    let mut seen = BTreeSet::new();
    let mut stack = vec![root_id];
    while let Some(id) = stack.pop() {
        for dep in nodes[&id]["deps"].as_array().unwrap() {
            let normal = dep["dep_kinds"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["kind"].is_null());
            let dep_id = dep["pkg"].as_str().unwrap().to_string();
            let name = packages[&dep_id].clone();
            if normal && seen.insert(name.clone()) && !OPAQUE.contains(&name.as_str()) {
                stack.push(dep_id);
            }
        }
    }
    seen
}

#[test]
fn core_overlay_and_sim_have_no_io_dependencies() {
    let meta = metadata();
    for root in ["natter-core", "natter-overlay", "natter-sim"] {
        let deps = normal_closure(&meta, root);
        let bad: Vec<_> = FORBIDDEN.iter().filter(|f| deps.contains(**f)).collect();
        assert!(bad.is_empty(), "{root} depends on I/O crates {bad:?}");
    }
}

#[test]
fn workspace_arrows_point_down() {
    let meta = metadata();
    for (krate, allowed) in ALLOWED {
        let deps = normal_closure(&meta, krate);
        for d in deps.iter().filter(|d| d.starts_with("natter-")) {
            assert!(
                allowed.contains(&d.as_str()),
                "{krate} must not depend on {d}"
            );
        }
    }
}

#[test]
fn applications_link_no_server_side_crate() {
    let meta = metadata();
    for root in ["natter", "natter-ffi"] {
        let deps = normal_closure(&meta, root);
        let bad: Vec<_> = SERVER_SIDE.iter().filter(|f| deps.contains(**f)).collect();
        assert!(
            bad.is_empty(),
            "{root} depends on server-side crates {bad:?}"
        );
    }
}

#[test]
fn sans_io_sources_never_touch_the_os() {
    const BANNED: &[&str] = &[
        "Instant::now",
        "SystemTime",
        "std::net::UdpSocket",
        "std::net::TcpStream",
        "std::net::TcpListener",
        "std::thread",
        "std::fs",
        "std::env",
        "thread_local!",
        "static mut",
        "OsRng",
        "ring::rand",
        "getrandom",
    ];
    for dir in ["core/src", "overlay/src"] {
        let mut stack = vec![workspace_root().join(dir)];
        while let Some(p) = stack.pop() {
            if p.is_dir() {
                stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            } else if p.extension().is_some_and(|e| e == "rs") {
                // A unit-test module kept in its own file (`foo/tests.rs`, declared in `foo.rs`
                // as `#[cfg(test)] mod tests;`) is test code as a whole.
                if p.file_name().is_some_and(|n| n == "tests.rs") {
                    let parent = p.parent().unwrap().with_extension("rs");
                    let decl = std::fs::read_to_string(&parent).unwrap_or_default();
                    let declared = decl
                        .split("#[cfg(test)]")
                        .skip(1)
                        .any(|after| after.trim_start().starts_with("mod tests;"));
                    assert!(declared, "{} is not a cfg(test) module", p.display());
                    continue;
                }
                let text = std::fs::read_to_string(&p).unwrap();
                // Unit tests (the `#[cfg(test)]` module that ends each file) may use a real
                // `Instant` as an arbitrary origin; library code may not.
                let code = text.split("#[cfg(test)]").next().unwrap_or("");
                for b in BANNED {
                    // Doc comments may mention these words; code may not.
                    let hit = code
                        .lines()
                        .filter(|l| !l.trim_start().starts_with("//"))
                        .any(|l| l.contains(b));
                    assert!(!hit, "{} uses {b}", p.display());
                }
            }
        }
    }
}
