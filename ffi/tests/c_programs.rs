//! The C ABI from C and C++, as an integrator uses it: `make install-files` puts the header,
//! both libraries and `natter.pc` under a prefix; the examples (`examples/Makefile`) and the
//! C test programs (`ffi/tests/c/`) are compiled against that prefix through pkg-config with
//! every warning an error; then they run, C programs under valgrind's memcheck (no errors, no
//! definite leaks), against a real login server and super node on loopback (started in this
//! process by `natter_fixtures::TestNet`).
//!
//! The library comes from this test's own target directory: the first test builds it with
//! `cargo build -p natter-ffi` (a no-op after `cargo test --workspace`). Without valgrind the
//! programs run bare, with a note, unless `NATTER_REQUIRE_VALGRIND=1` (set by `make test`)
//! makes that a failure.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::Receiver;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// One program at a time: valgrind makes them CPU-hungry, and calls need real time.
static SERIAL: Mutex<()> = Mutex::new(());

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// Where everything was built and is staged.
struct Staged {
    /// The staging prefix (`include/`, `lib/`, `lib/pkgconfig/`).
    prefix: PathBuf,
    /// Compiled examples and test programs.
    bin: PathBuf,
    /// Whether valgrind runs.
    valgrind: bool,
}

fn run(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn pkg_config(prefix: &Path, args: &[&str]) -> Vec<String> {
    let out = run(
        Command::new("pkg-config")
            .args(args)
            .arg("natter")
            .env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig")),
        "pkg-config",
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// The C program of docs/c-api.md (the code block after `<!-- walkthrough -->`).
fn walkthrough_source() -> String {
    let page = std::fs::read_to_string(root().join("docs/c-api.md")).unwrap();
    let start = page
        .find("<!-- walkthrough -->\n```c\n")
        .expect("docs/c-api.md has the walkthrough")
        + "<!-- walkthrough -->\n```c\n".len();
    let len = page[start..].find("\n```").expect("the code block ends");
    format!("{}\n", &page[start..start + len])
}

fn stage() -> &'static Staged {
    static STAGED: OnceLock<Staged> = OnceLock::new();
    STAGED.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
        let target_dir = profile_dir.parent().unwrap();
        let mut build = Command::new(env!("CARGO"));
        build
            .current_dir(root())
            .args(["build", "-p", "natter-ffi"])
            .env("CARGO_TARGET_DIR", target_dir);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        // What cargo set for this test is not the build's business: build scripts that watch
        // such variables (ring watches CARGO_MANIFEST_DIR) would rebuild every time.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy().into_owned();
            if k.starts_with("CARGO_PKG_")
                || k.starts_with("CARGO_MANIFEST_")
                || [
                    "CARGO_CRATE_NAME",
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                    "OUT_DIR",
                ]
                .contains(&k.as_str())
            {
                build.env_remove(k);
            }
        }
        run(&mut build, "cargo build -p natter-ffi");

        let out = profile_dir.join("natter-c-tests");
        let _ = std::fs::remove_dir_all(&out);
        let (prefix, bin) = (out.join("prefix"), out.join("bin"));
        std::fs::create_dir_all(&bin).unwrap();
        run(
            Command::new("make")
                .current_dir(root())
                .args(["-s", "install-files"])
                .arg(format!("PREFIX={}", prefix.display()))
                .arg(format!("LIB_BUILD_DIR={}", profile_dir.display())),
            "make install-files",
        );
        run(
            Command::new("make")
                .current_dir(root().join("examples"))
                .arg("-s")
                .arg(format!("OUT={}", bin.display()))
                .env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig")),
            "make -C examples (the C and C++ examples, -Werror)",
        );
        let cflags = pkg_config(&prefix, &["--cflags"]);
        let libs = pkg_config(&prefix, &["--libs"]);
        // docs/c-api.md's walkthrough, exactly as the page shows it.
        let walkthrough = out.join("walkthrough.c");
        std::fs::write(&walkthrough, walkthrough_source()).unwrap();
        for (name, extra) in [
            ("null_args", None),
            ("threads", Some("-pthread")),
            ("account", None),
            ("contacts", None),
            ("requests", None),
            ("walkthrough", None),
            ("audio", Some("-lm")),
        ] {
            let src = if name == "walkthrough" {
                walkthrough.clone()
            } else {
                root().join(format!("ffi/tests/c/{name}.c"))
            };
            run(
                Command::new("cc")
                    .args([
                        "-std=c99",
                        "-Wall",
                        "-Wextra",
                        "-Wpedantic",
                        "-Werror",
                        "-g",
                    ])
                    .args(&cflags)
                    .arg(&src)
                    .arg("-o")
                    .arg(bin.join(name))
                    .args(&libs)
                    .args(extra),
                &format!("compiling {name}.c"),
            );
        }
        // Without valgrind the programs run bare (the test still checks what they do).
        let valgrind = natter_fixtures::require_tool("valgrind", "NATTER_REQUIRE_VALGRIND");
        Staged {
            prefix,
            bin,
            valgrind,
        }
    })
}

impl Staged {
    /// A staged program, under valgrind when available (its log in `log`).
    fn program(&self, name: &str, log: &Path, memcheck: bool) -> Command {
        let exe = self.bin.join(name);
        let mut cmd = if memcheck && self.valgrind {
            let mut c = Command::new("valgrind");
            c.args([
                "--tool=memcheck",
                "--error-exitcode=99",
                "--leak-check=full",
                "--show-leak-kinds=definite",
                "--errors-for-leak-kinds=definite",
                "--fair-sched=yes",
                "--num-callers=30",
            ])
            .arg(format!(
                "--suppressions={}",
                root().join("ffi/tests/valgrind.supp").display()
            ))
            .arg(format!("--log-file={}", log.display()))
            .arg(exe);
            c
        } else {
            Command::new(exe)
        };
        cmd.env("LD_LIBRARY_PATH", self.prefix.join("lib"));
        cmd
    }
}

fn lines(child: &mut Child) -> Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Read `rx` until a line contains `want` (panics after `secs`); returns the lines read.
fn wait_line(rx: &Receiver<String>, want: &str, secs: u64) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => {
                let hit = l.contains(want);
                seen.push(l);
                if hit {
                    return seen;
                }
            }
            Err(_) => panic!("waited {secs} s for {want:?}; saw {seen:#?}"),
        }
    }
}

/// A login server and one super node, on loopback, in this process.
struct Network {
    file: PathBuf,
    _net: natter_fixtures::TestNet,
}

fn network(_s: &Staged, _dir: &Path) -> Network {
    let net = natter_fixtures::TestNet::start();
    Network {
        file: net.network_path().to_path_buf(),
        _net: net,
    }
}

/// Wait for `child` up to `secs`; kill it after that. Returns its exit code.
fn wait_exit(child: &mut Child, secs: u64) -> Option<i32> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return s.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Assert a program's exit, showing its output and valgrind's verdict on failure.
fn assert_clean(what: &str, code: Option<i32>, output: &[String], log: &Path) {
    let vg = std::fs::read_to_string(log).unwrap_or_default();
    let summary: Vec<&str> = vg
        .lines()
        .filter(|l| l.contains("ERROR SUMMARY") || l.contains("definitely lost"))
        .collect();
    for l in &summary {
        eprintln!("{what}: {l}");
    }
    assert!(
        code == Some(0),
        "{what} exited with {code:?} (99: valgrind found errors or definite leaks)\n\
         output:\n{}\nvalgrind log {}:\n{vg}",
        output.join("\n"),
        log.display()
    );
}

/// Run a program to completion, collecting its output.
fn run_to_end(mut cmd: Command, what: &str, log: &Path, secs: u64) -> Vec<String> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let rx = lines(&mut child);
    let code = wait_exit(&mut child, secs);
    // The reader ends at the end of the program's output.
    let out: Vec<String> = rx.iter().collect();
    assert_clean(what, code, &out, log);
    out
}

/// The offline network file of the NULL-argument test: it parses, and nothing listens at its
/// login address.
fn offline_network(dir: &Path) -> PathBuf {
    let path = dir.join("network.toml");
    std::fs::write(
        &path,
        format!(
            "[login]\naddress = \"127.0.0.1:1\"\nserver_name = \"natter-login\"\n\
             tls_sha256 = \"{}\"\n\n[authority]\nkeys = [\"{}\"]\n",
            "ab".repeat(32),
            "cd".repeat(32)
        ),
    )
    .unwrap();
    path
}

#[test]
fn every_function_rejects_null_and_invalid_handles() {
    let s = stage();
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Every function natter.h declares is exercised by null_args.c.
    let header = std::fs::read_to_string(root().join("include/natter.h")).unwrap();
    let test = std::fs::read_to_string(root().join("ffi/tests/c/null_args.c")).unwrap();
    let declared: Vec<&str> = header
        .lines()
        .filter(|l| !l.starts_with(' ') && !l.starts_with('*') && !l.starts_with("typedef"))
        .filter_map(|l| {
            let i = l.find("natter_")?;
            let name = &l[i..];
            let end = name.find('(')?;
            Some(&name[..end])
        })
        .collect();
    assert!(declared.len() > 25, "{declared:?}");
    for f in &declared {
        assert!(
            test.contains(&format!("{f}(")),
            "null_args.c does not call {f}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("null_args.vg");
    let mut cmd = s.program("null_args", &log, true);
    cmd.arg(offline_network(dir.path()))
        .arg(dir.path().join("data"));
    let out = run_to_end(cmd, "null_args", &log, 300);
    eprintln!("null_args: {}", out.join(" | "));
}

/// The RMS of a 16-bit mono WAV file's samples.
fn wav_rms(path: &Path) -> (usize, f64) {
    let bytes = std::fs::read(path).unwrap();
    let data = &bytes[44..];
    let samples: Vec<f64> = data
        .chunks_exact(2)
        .map(|b| f64::from(i16::from_le_bytes([b[0], b[1]])))
        .collect();
    let rms = (samples.iter().map(|s| s * s).sum::<f64>() / samples.len().max(1) as f64).sqrt();
    (samples.len(), rms)
}

/// "... N frames sent, M received ..." from the example's statistics line.
fn frames(lines: &[String]) -> (u64, u64) {
    let l = lines
        .iter()
        .find(|l| l.starts_with("call stats:"))
        .unwrap_or_else(|| panic!("no statistics in {lines:#?}"));
    let num_before = |word: &str| -> u64 {
        let i = l.find(word).unwrap();
        l[..i]
            .split_whitespace()
            .last()
            .and_then(|n| n.parse().ok())
            .unwrap()
    };
    (num_before(" frames sent"), num_before(" received"))
}

#[test]
fn two_c_processes_call_with_audio_both_ways_under_valgrind() {
    let s = stage();
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let net = network(s, dir.path());
    let speech = root().join("media/testdata/speech.wav");
    let side = |user: &str, role: &[&str]| {
        let log = dir.path().join(format!("{user}.vg"));
        let mut cmd = s.program("natter-call", &log, true);
        cmd.arg("--network")
            .arg(&net.file)
            .arg("--data")
            .arg(dir.path().join(user))
            .args(["--user", user, "--register", "--listen", "127.0.0.1:0"])
            .args(role)
            .arg("--play")
            .arg(&speech)
            .arg("--record")
            .arg(dir.path().join(format!("{user}-heard.wav")))
            // Memcheck slows code about fifty times: the cheapest encoder keeps real time.
            .args(["--complexity", "0", "--timeout", "240"])
            .env("NATTER_PASSWORD", format!("{user}'s password"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().unwrap();
        let rx = lines(&mut child);
        (child, rx, log)
    };
    let (mut alice, alice_rx, alice_log) = side("alice", &["--answer"]);
    let mut alice_out = wait_line(&alice_rx, "ready", 240);
    // Three seconds, and until 150 frames went each way: under memcheck on a loaded machine
    // the audio loops fall behind real time, and a call cut at a fixed time carried fewer.
    let (mut bob, bob_rx, bob_log) = side(
        "bob",
        &["--call", "alice", "--seconds", "3", "--min-frames", "150"],
    );
    let bob_code = wait_exit(&mut bob, 300);
    let alice_code = wait_exit(&mut alice, 60);
    // The readers end at the end of the programs' output.
    let bob_out: Vec<String> = bob_rx.iter().collect();
    alice_out.extend(alice_rx.iter());
    for l in alice_out
        .iter()
        .filter(|l| l.contains("stats") || l.contains("path"))
    {
        eprintln!("alice: {l}");
    }
    for l in bob_out
        .iter()
        .filter(|l| l.contains("stats") || l.contains("path"))
    {
        eprintln!("bob: {l}");
    }
    assert_clean("bob (caller)", bob_code, &bob_out, &bob_log);
    assert_clean("alice (callee)", alice_code, &alice_out, &alice_log);
    for (who, out) in [("alice", &alice_out), ("bob", &bob_out)] {
        let (sent, received) = frames(out);
        // About 3 s at 50 frames a second; memcheck costs some.
        assert!(
            sent >= 100 && received >= 100,
            "{who}: {sent} frames sent, {received} received"
        );
        let (n, rms) = wav_rms(&dir.path().join(format!("{who}-heard.wav")));
        eprintln!("{who} heard {n} samples, RMS {rms:.0}");
        assert!(n >= 2 * 16_000, "{who} recorded {n} samples");
        // The speech recording's RMS is about 2,500; silence is 0.
        assert!(rms > 500.0, "{who} heard silence (RMS {rms:.0})");
    }
    eprintln!(
        "call under valgrind: {:.1} s in all",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn c_threads_share_clients_under_valgrind() {
    let s = stage();
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let net = network(s, dir.path());
    let log = dir.path().join("threads.vg");
    let mut cmd = s.program("threads", &log, true);
    cmd.arg(&net.file).arg(dir.path().join("data"));
    let out = run_to_end(cmd, "threads", &log, 400);
    eprintln!("threads: {}", out.join(" | "));
    assert!(out.iter().any(|l| l.contains("call ended")), "{out:#?}");
    eprintln!(
        "threads under valgrind: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn c_account_lists_devices_and_changes_the_password_under_valgrind() {
    let s = stage();
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let net = network(s, dir.path());
    let log = dir.path().join("account.vg");
    let mut cmd = s.program("account", &log, true);
    cmd.arg(&net.file).arg(dir.path().join("data"));
    let out = run_to_end(cmd, "account", &log, 300);
    eprintln!("account: {}", out.join(" | "));
    assert!(
        out.iter().any(|l| l.contains("account: all checks passed")),
        "{out:#?}"
    );
}

#[test]
fn c_buddy_list_edited_and_restored_on_a_new_install_under_valgrind() {
    let s = stage();
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let net = network(s, dir.path());
    let log = dir.path().join("contacts.vg");
    let started = Instant::now();
    let mut cmd = s.program("contacts", &log, true);
    cmd.arg(&net.file).arg(dir.path().join("data"));
    let out = run_to_end(cmd, "contacts", &log, 300);
    eprintln!(
        "contacts ({:.1} s): {}",
        started.elapsed().as_secs_f64(),
        out.join(" | ")
    );
    assert!(
        out.iter()
            .any(|l| l.contains("contacts: all checks passed")),
        "{out:#?}"
    );
}

#[test]
fn c_requests_in_the_background_and_setup_from_memory_under_valgrind() {
    let s = stage();
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let net = network(s, dir.path());
    // A login server that accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let toml = std::fs::read_to_string(&net.file).unwrap().replace(
        &net._net.server().address().to_string(),
        &silent.local_addr().unwrap().to_string(),
    );
    let silent_file = dir.path().join("silent.toml");
    std::fs::write(&silent_file, toml).unwrap();
    let log = dir.path().join("requests.vg");
    let mut cmd = s.program("requests", &log, true);
    cmd.arg(&net.file)
        .arg(&silent_file)
        .arg(offline_network(dir.path()));
    let out = run_to_end(cmd, "requests", &log, 300);
    eprintln!("requests: {}", out.join(" | "));
    assert!(
        out.iter()
            .any(|l| l.contains("requests: all checks passed")),
        "{out:#?}"
    );
}

#[test]
fn the_c_walkthrough_logs_in_from_memory_and_calls_under_valgrind() {
    let s = stage();
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let net = network(s, dir.path());
    let network = net._net.network();
    natter_fixtures::register(&network, "alice", "alice's password");
    let bob = net._net.client("bob");
    let _answers = natter_fixtures::answer_calls(&bob);
    let keychain = dir.path().join("keychain.bin");
    let mut outputs = Vec::new();
    for run in ["with the password", "from the keychain"] {
        let log = dir.path().join(format!("walkthrough-{}.vg", outputs.len()));
        let mut cmd = s.program("walkthrough", &log, true);
        cmd.arg(&net.file)
            .arg("alice")
            .arg("bob")
            .arg(&keychain)
            .env("NATTER_PASSWORD", "alice's password");
        if run == "from the keychain" {
            // The password is not needed (nor offered) the second time.
            cmd.env_remove("NATTER_PASSWORD");
        }
        let out = run_to_end(cmd, "walkthrough", &log, 300);
        eprintln!("walkthrough ({run}): {}", out.join(" | "));
        assert!(
            out.iter().any(|l| l.starts_with("logged in as alice")),
            "{out:#?}"
        );
        assert!(out.iter().any(|l| l.ends_with("(this one)")), "{out:#?}");
        assert!(out.iter().any(|l| l.starts_with("call: ")), "{out:#?}");
        assert!(keychain.exists());
        outputs.push(out);
    }
    // The same device both times: the keychain made it.
    let device = |out: &[String]| {
        out.iter()
            .find(|l| l.starts_with("logged in as"))
            .cloned()
            .unwrap()
    };
    assert_eq!(device(&outputs[0]), device(&outputs[1]));
}

#[test]
fn c_audio_devices_listed_and_switched_mid_call() {
    use natter_fixtures::alsa::{sink, source, Microphone, Speaker, ALSA_CONF};
    let s = stage();
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !Path::new(ALSA_CONF).exists() {
        eprintln!("skipped: no ALSA configuration ({ALSA_CONF}); install libasound2");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let net = network(s, dir.path());
    let (a, b) = (dir.path().join("a.fifo"), dir.path().join("b.fifo"));
    let (speaker_a, speaker_b) = (Speaker::new(&a), Speaker::new(&b));
    // bob's microphone (silence): with a microphone and a speaker, voice processing is on.
    let mic = dir.path().join("mic.fifo");
    let _mic = Microphone::try_new(&mic, false).unwrap();
    let conf = dir.path().join("natter.conf");
    std::fs::write(
        &conf,
        sink("natter_a", &a) + &sink("natter_b", &b) + &source("natter_mic", &mic),
    )
    .unwrap();
    let log = dir.path().join("audio.vg");
    let mut cmd = s.program("audio", &log, true);
    cmd.arg(&net.file).arg(dir.path().join("data")).env(
        "ALSA_CONFIG_PATH",
        format!("{ALSA_CONF}:{}", conf.display()),
    );
    let out = run_to_end(cmd, "audio", &log, 300);
    eprintln!(
        "audio: {} | natter_a {} loud samples, natter_b {}",
        out.join(" | "),
        speaker_a.loud(),
        speaker_b.loud()
    );
    assert!(
        out.iter().any(|l| l.contains("audio: all checks passed")),
        "{out:#?}"
    );
    // ALSA's complaints (no card 0 here) went to the log callback, not to standard error.
    if !Path::new("/proc/asound/cards").exists() {
        assert!(
            out.iter()
                .any(|l| l.starts_with("alsa log lines: ") && l != "alsa log lines: 0"),
            "{out:#?}"
        );
    }
    // alice spoke until bob had received 2 s of her voice for each speaker (a quiet run
    // counts 40,000-90,000 loud samples in each). She used to speak 2 s of her own time, of
    // which a loaded machine, under valgrind, carried only part (7,078 and 3,001).
    assert!(speaker_a.loud() > 8_000, "natter_a: {}", speaker_a.loud());
    assert!(speaker_b.loud() > 8_000, "natter_b: {}", speaker_b.loud());
}

#[test]
fn cpp_example_logs_in_and_searches() {
    let s = stage();
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let net = network(s, dir.path());
    let log = dir.path().join("status.log");
    let mut cmd = s.program("natter-status", &log, false);
    cmd.arg("--network")
        .arg(&net.file)
        .arg("--data")
        .arg(dir.path().join("carol"))
        .args(["--user", "carol", "--register", "--listen", "127.0.0.1:0"])
        .args(["carol", "nobody-here"])
        .env("NATTER_PASSWORD", "carol's password");
    let out = run_to_end(cmd, "natter-status (C++)", &log, 120);
    let text = out.join("\n");
    assert!(text.contains("attached to super node"), "{text}");
    assert!(
        text.contains("search carol: found, 1 device(s) online"),
        "{text}"
    );
    assert!(text.contains("search nobody-here: not found"), "{text}");
    assert!(text.contains("state: started, 1 super node(s)"), "{text}");
    assert!(text.contains("logged in as carol"), "{text}");
}

#[test]
fn the_installed_library_is_stripped_with_its_debug_information_beside_it() {
    let s = stage();
    let lib = s.prefix.join("lib");
    let real = std::fs::read_dir(&lib)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with("libnatter.so.") && name.matches('.').count() == 4 && !p.is_symlink()
        })
        .expect("libnatter.so.MAJOR.MINOR.PATCH");
    let sections = |path: &Path| {
        let out = run(
            Command::new("readelf").args(["-S", "--wide"]).arg(path),
            "readelf -S",
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let shipped = sections(&real);
    assert!(!shipped.contains(".debug_info"), "not stripped");
    assert!(shipped.contains(".gnu_debuglink"), "no debug link");
    let debug = lib.join(".debug").join(format!(
        "{}.debug",
        real.file_name().unwrap().to_string_lossy()
    ));
    assert!(
        sections(&debug).contains(".debug_info"),
        "no split debug information"
    );
    assert!(s.prefix.join("share/natter/valgrind.supp").exists());
    let (shipped_mb, debug_mb) = (
        std::fs::metadata(&real).unwrap().len() / 1_000_000,
        std::fs::metadata(&debug).unwrap().len() / 1_000_000,
    );
    eprintln!("installed libnatter: {shipped_mb} MB, its debug information {debug_mb} MB");
}

#[test]
fn static_library_links_and_runs() {
    let s = stage();
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let exe = s.bin.join("natter-version-static");
    // `pkg-config --static` gives -lnatter plus what the static library needs; name the
    // archive itself so the shared library next to it is not picked.
    let libs: Vec<String> = pkg_config(&s.prefix, &["--static", "--libs"])
        .into_iter()
        .filter(|l| l != "-lnatter" && !l.starts_with("-L"))
        .collect();
    run(
        Command::new("cc")
            .args(["-std=c99", "-Wall", "-Wextra", "-Wpedantic", "-Werror"])
            .args(pkg_config(&s.prefix, &["--cflags"]))
            .arg(root().join("examples/c/version.c"))
            .arg(s.prefix.join("lib/libnatter.a"))
            .args(&libs)
            .arg("-o")
            .arg(&exe),
        "linking version.c statically",
    );
    let out = run(&mut Command::new(&exe), "natter-version-static");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("natter {}, ABI", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    let ldd = run(Command::new("ldd").arg(&exe), "ldd");
    assert!(
        !String::from_utf8_lossy(&ldd.stdout).contains("libnatter"),
        "statically linked"
    );
}
