//! What operators use: config files for `natter login-server` and `natter node`, and a node's
//! status (`--status-file`, `natter status`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    natter, network_file, output_lines, register, start_as, start_node, wait_in, Children,
};

fn write(path: &Path, text: &str) -> PathBuf {
    std::fs::write(path, text).unwrap();
    path.to_path_buf()
}

/// `natter ARGS` run to completion: (success, stdout, stderr).
fn run(args: &[&str]) -> (bool, String, String) {
    let out = natter().args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_login_server_and_nodes_run_from_config_files_and_flags_override_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut children = Children(Vec::new());
    // 192.0.2.1 (TEST-NET-1) is no address of this host: had the file's `listen` won over the
    // flag, the server could not start. The file's bootstrap entry (a loopback address where
    // nothing listens) must reach the network file; the real super node joins the list once it
    // listens, on a port the system picks.
    let server_toml = write(
        &dir.path().join("login.toml"),
        &format!(
            "data = {:?}\nlisten = \"192.0.2.1:4433\"\nbootstrap = [\"127.0.0.3:9\"]\n\
             renewal_grace_days = 3\nserver_name = \"natter-login\"\n",
            dir.path().join("server")
        ),
    );
    let mut server = natter()
        .args(["login-server", "--listen", "127.0.0.1:0", "--config"])
        .arg(&server_toml)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = output_lines(&mut server);
    children.0.push(server);
    let lines = wait_in(
        &out,
        &["login server listening on 127.0.0.1:", "network file: "],
    );
    let network = network_file(&lines);
    let listed = std::fs::read_to_string(&network).unwrap();
    assert!(
        listed.contains("127.0.0.3:9"),
        "the file's bootstrap list: {listed}"
    );

    let password = "a passphrase from the config";
    let sn_data = dir.path().join("snode");
    register(&network, &sn_data, "snode", password);
    let sn_toml = write(
        &dir.path().join("snode.toml"),
        &format!(
            "network = {network:?}\ndata = {sn_data:?}\nuser = \"snode\"\n\
             listen = \"127.0.0.1:0\"\nsupernode = true\nmax_clients = 10\n"
        ),
    );
    let mut sn = natter()
        .args(["node", "--config"])
        .arg(&sn_toml)
        .env("NATTER_PASSWORD", password)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sn_out = output_lines(&mut sn);
    children.0.push(sn);
    let listening = wait_in(&sn_out, &["node listening on 127.0.0.1:"]);
    let line = listening
        .iter()
        .find(|l| l.contains("node listening"))
        .unwrap();
    assert!(line.contains("(role: Force"), "{line}");
    let sn_addr = common::listening_address(&listening);
    common::add_bootstrap(&network, sn_addr);

    let dora_data = dir.path().join("dora");
    register(&network, &dora_data, "dora", password);
    let dora_toml = write(
        &dir.path().join("dora.toml"),
        &format!(
            "network = {network:?}\ndata = {dora_data:?}\nuser = \"dora\"\n\
             listen = \"192.0.2.1:4000\"\nno_supernode = true\nsearch = [\"snode\"]\n"
        ),
    );
    let mut dora = natter()
        .args(["node", "--listen", "127.0.0.1:0"])
        .arg("--config")
        .arg(&dora_toml)
        .env("NATTER_PASSWORD", password)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let dora_out = output_lines(&mut dora);
    children.0.push(dora);
    wait_in(
        &dora_out,
        &[
            "(role: Forbid",
            &format!("attached to super node {sn_addr}"),
            "found snode: device",
        ],
    );
}

#[test]
fn config_file_mistakes_are_refused_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let node_toml = write(
        &dir.path().join("node.toml"),
        "network = \"network.toml\"\ndata = \"d\"\nuser = \"erin\"\nmax-clients = 50\n",
    );
    let (ok, _, stderr) = run(&["node", "--config", node_toml.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        stderr.contains("unknown key `max-clients`")
            && stderr.contains("did you mean `max_clients`?")
            && stderr.contains("node.toml"),
        "{stderr}"
    );
    let login_toml = write(
        &dir.path().join("login.toml"),
        "data = \"d\"\ndatabase = \"postgres://db/natter\"\n",
    );
    let (ok, _, stderr) = run(&["login-server", "--config", login_toml.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        stderr.contains("unknown key `database`")
            && stderr.contains("the keys are: data, listen, db,"),
        "{stderr}"
    );
    // A bad value names the key; a missing file and a broken one are clear too.
    let bad = write(&dir.path().join("bad.toml"), "listen = \"0.0.0.0\"\n");
    let (ok, _, stderr) = run(&["login-server", "--config", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        stderr.contains("key `listen`") && stderr.contains("\"0.0.0.0\" is not valid"),
        "{stderr}"
    );
    let (ok, _, stderr) = run(&["node", "--config", "/nonexistent/natter.toml"]);
    assert!(!ok);
    assert!(
        stderr.contains("cannot read the config file /nonexistent/natter.toml"),
        "{stderr}"
    );
    let broken = write(&dir.path().join("broken.toml"), "[node\n");
    let (ok, _, stderr) = run(&["node", "--config", broken.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("is not valid TOML"), "{stderr}");
}

/// `natter status --json` for this status file, parsed, once it satisfies `want` (or 40 s
/// pass: the node rewrites it every 5 s).
fn status_when(
    path: &Path,
    what: &str,
    want: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let (_, stdout, stderr) =
            run(&["status", "--json", "--status-file", path.to_str().unwrap()]);
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&stdout) {
            if want(&v) {
                return v;
            }
        }
        assert!(
            Instant::now() < deadline,
            "waited for a status with {what}; last: {stdout}{stderr}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_super_node_reports_its_clients_index_and_relayed_calls() {
    let dir = tempfile::tempdir().unwrap();
    let mut children = Children(Vec::new());
    let network = common::login_server(dir.path(), &mut children);
    let sn_status = dir.path().join("sn-status.json");
    let (sn, sn_addr, sn_out) = common::start_super_node(
        &network,
        &dir.path().join("snode"),
        "snode",
        "super node password",
        &["--status-file", sn_status.to_str().unwrap()],
    );
    children.0.push(sn);

    // An ordinary node, with its status in its data directory.
    let carol_data = dir.path().join("carol");
    let mut carol = start_node(
        &network,
        &carol_data,
        "carol",
        "carol's password",
        0,
        &["--no-supernode"],
    );
    let carol_out = output_lines(&mut carol);
    children.0.push(carol);
    wait_in(&carol_out, &["attached to super node"]);
    let sn_addr = sn_addr.to_string();
    let carol_status = status_when(&carol_data.join("status.json"), "carol attached", |v| {
        v["attached_to"]
            .as_array()
            .is_some_and(|a| a.iter().any(|s| s == sn_addr.as_str()))
    });
    assert_eq!(carol_status["super_node"], false);
    assert_eq!(carol_status["role_policy"], "forbid");
    let (ok, report, stderr) = run(&["status", "--data", carol_data.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(
        report.contains("role: ordinary node (policy forbid)")
            && report.contains(&format!("attached to: {sn_addr}")),
        "{report}"
    );

    // Two clients call each other; both keep their addresses private, so the call stays on
    // the super node's relay.
    let mut alice = start_as(
        "client",
        &network,
        &dir.path().join("alice"),
        "alice",
        "alice's password",
        0,
        &["--auto-answer", "--relay-only"],
    );
    let alice_out = output_lines(&mut alice);
    children.0.push(alice);
    wait_in(&alice_out, &["attached to super node"]);
    let mut bob = start_as(
        "client",
        &network,
        &dir.path().join("bob"),
        "bob",
        "bob's password",
        0,
        &[
            "--call",
            "alice",
            "--relay-only",
            "--hangup-after",
            "2",
            "--timeout",
            "20",
        ],
    );
    let bob_out = output_lines(&mut bob);
    children.0.push(bob);
    wait_in(&bob_out, &["call connected", "first media received"]);

    let v = status_when(
        &sn_status,
        "3 clients, their records and a relayed call",
        |v| {
            v["clients"].as_u64() == Some(3)
                && v["index"]["records"].as_u64().is_some_and(|n| n >= 3)
                && v["relay"]["allocated"].as_u64().is_some_and(|n| n >= 1)
                && v["relay"]["relayed_packets"]
                    .as_u64()
                    .is_some_and(|n| n > 50)
        },
    );
    assert_eq!(v["super_node"], true);
    assert_eq!(v["running"], true);
    assert!(
        v["super_nodes_known"].as_u64().is_some_and(|n| n >= 1),
        "{v}"
    );
    assert!(
        v["relay"]["relayed_bytes"]
            .as_u64()
            .is_some_and(|n| n > 1000),
        "{v}"
    );
    assert!(v["nat"].is_string() || v["nat"].is_null(), "{v}");

    let (ok, report, stderr) = run(&["status", "--status-file", sn_status.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    eprintln!("{v:#}\n{report}");
    for needle in [
        "role: super node (policy force)",
        "clients: 3",
        "index: ",
        "relay: ",
        "running (status written",
    ] {
        assert!(report.contains(needle), "{needle:?} in {report}");
    }

    // Stopped cleanly, the node says so in its last status, and `natter status` fails.
    let sn = &mut children.0[1];
    let term = Command::new("kill")
        .args(["-TERM", &sn.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    wait_in(&sn_out, &["stopping: host cache saved"]);
    let _ = wait_exit(sn);
    let (ok, report, stderr) = run(&["status", "--status-file", sn_status.to_str().unwrap()]);
    assert!(!ok);
    assert!(report.contains("stopped"), "{report}");
    assert!(stderr.contains("the node stopped"), "{stderr}");
}

fn wait_exit(child: &mut Child) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}
