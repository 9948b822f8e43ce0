//! Helpers shared by the command-line tests: the binary, child processes and their output, and
//! a network to run them in. Nodes listen on ports the system picks (`--listen 127.0.0.1:0`):
//! a super node prints the address it got, which goes into the network file's bootstrap list.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The `natter` binary under test.
pub fn natter() -> Command {
    Command::new(env!("CARGO_BIN_EXE_natter"))
}

/// Kills the child processes when the test ends, however it ends.
pub struct Children(pub Vec<std::process::Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Read `child`'s standard output until a line contains every one of `want` (or 30 s pass).
pub fn wait_for_lines(child: &mut std::process::Child, want: &[&str]) -> Vec<String> {
    wait_in(&output_lines(child), want)
}

/// `child`'s standard output, line by line (read for as long as the receiver lives).
pub fn output_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
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

/// Read lines from `rx` until a line contains every one of `want` (or 30 s pass).
pub fn wait_in(rx: &std::sync::mpsc::Receiver<String>, want: &[&str]) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while !want
        .iter()
        .all(|w| seen.iter().any(|l: &String| l.contains(w)))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("waited for {want:?}; saw {seen:#?}"),
        }
    }
    seen
}

/// Registers `user` (device data in `data`, password from `password`), then starts
/// `natter node` for it on 127.0.0.1:`port` with `extra` options.
pub fn start_node(
    network: &str,
    data: &std::path::Path,
    user: &str,
    password: &str,
    port: u16,
    extra: &[&str],
) -> std::process::Child {
    start_as("node", network, data, user, password, port, extra)
}

/// Registers `user`, then starts `natter SUBCOMMAND` (`node` or `client`) for it on
/// 127.0.0.1:`port` with `extra` options; standard input is piped (for client commands).
pub fn start_as(
    subcommand: &str,
    network: &str,
    data: &std::path::Path,
    user: &str,
    password: &str,
    port: u16,
    extra: &[&str],
) -> std::process::Child {
    register(network, data, user, password);
    natter()
        .args([subcommand, "--user", user, "--network", network, "--data"])
        .arg(data)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(extra)
        .env("NATTER_PASSWORD", password)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        // NATTER_TEST_STDERR=1 shows the processes' logs (NATTER_LOG sets their level).
        .stderr(if std::env::var_os("NATTER_TEST_STDERR").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .spawn()
        .unwrap()
}

/// A login server whose network file names one super node, and that super node; returns the
/// network file.
pub fn network_with_a_super_node(dir: &std::path::Path, children: &mut Children) -> String {
    let network = login_server(dir, children);
    let (sn, _, _) = start_super_node(
        &network,
        &dir.join("snode"),
        "snode",
        "super node password",
        &[],
    );
    children.0.push(sn);
    network
}

/// Start `natter login-server` on loopback with its data in `dir/server`; returns the network
/// file it wrote.
pub fn login_server(dir: &std::path::Path, children: &mut Children) -> String {
    let mut server = natter()
        .args(["login-server", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.join("server"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = wait_for_lines(&mut server, &["network file: "]);
    children.0.push(server);
    network_file(&lines)
}

/// The network file a login server's `network file: PATH (...)` line names.
pub fn network_file(lines: &[String]) -> String {
    lines
        .iter()
        .find_map(|l| l.strip_prefix("network file: "))
        .unwrap()
        .split(" (")
        .next()
        .unwrap()
        .to_string()
}

/// Registers `user` and starts `natter node --supernode` for it on a port the system picks,
/// with `extra` options; once it listens, its address joins the network file's bootstrap
/// list. Returns the process, its address and its output (the lines so far are consumed).
pub fn start_super_node(
    network: &str,
    data: &std::path::Path,
    user: &str,
    password: &str,
    extra: &[&str],
) -> (
    std::process::Child,
    SocketAddr,
    std::sync::mpsc::Receiver<String>,
) {
    let mut args = vec!["--supernode"];
    args.extend_from_slice(extra);
    let mut sn = start_node(network, data, user, password, 0, &args);
    let out = output_lines(&mut sn);
    let lines = wait_in(&out, &["node listening on "]);
    let addr = listening_address(&lines);
    add_bootstrap(network, addr);
    (sn, addr, out)
}

/// The address in a `node listening on ADDR (...)` line.
pub fn listening_address(lines: &[String]) -> SocketAddr {
    lines
        .iter()
        .find_map(|l| l.split("node listening on ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no listening address in {lines:#?}"))
}

/// Add super node `addr` to the network file's bootstrap list (as an operator would by hand;
/// the login server keeps such entries when it rewrites the file).
pub fn add_bootstrap(network: &str, addr: SocketAddr) {
    let mut file = std::fs::read_to_string(network).unwrap();
    file.push_str(&format!("\n[[bootstrap]]\naddress = \"{addr}\"\n"));
    std::fs::write(network, file).unwrap();
}

/// `natter register` `user` (device data under `data`, password `password`); panics with the
/// program's error output when it fails.
pub fn register(network: &str, data: &std::path::Path, user: &str, password: &str) {
    let ok = natter()
        .args(["register", "--user", user, "--network", network, "--data"])
        .arg(data)
        .env("NATTER_PASSWORD", password)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

/// A `natter client --json` process, driven as a program would: JSON commands in, JSON
/// events out.
pub struct JsonClient {
    /// Its standard output, line by line.
    pub lines: std::sync::mpsc::Receiver<String>,
    /// Its standard input.
    pub stdin: std::process::ChildStdin,
    /// Every event read so far.
    pub seen: Vec<serde_json::Value>,
    /// Who it is, for messages.
    pub who: &'static str,
}

impl JsonClient {
    /// Send one command.
    pub fn send(&mut self, cmd: serde_json::Value) {
        use std::io::Write as _;
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// The first event, already read or still to come, that matches `want`.
    pub fn saw(&mut self, want: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        if let Some(v) = self.seen.iter().find(|v| want(v)) {
            return v.clone();
        }
        self.wait(want)
    }

    /// Read events until one matches `want` (30 s at most); every line must be a JSON event.
    pub fn wait(&mut self, want: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("{}: waited in vain; saw {:#?}", self.who, self.seen));
            let v: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("{}: not JSON on stdout: {line:?}: {e}", self.who));
            self.seen.push(v.clone());
            if want(&v) {
                return v;
            }
        }
    }
}

/// Matches the JSON event named `event`.
pub fn is(event: &'static str) -> impl Fn(&serde_json::Value) -> bool {
    move |v| v["event"] == event
}
