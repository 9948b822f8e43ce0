//! What operators use: config files for `natter login-server` and `natter node`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::{free_port_block, natter, output_lines, wait_in, Children};

/// The announced network file's path in a login server's output lines.
fn network_file(lines: &[String]) -> String {
    lines
        .iter()
        .find_map(|l| l.strip_prefix("network file: "))
        .expect("the network file was announced")
        .split(" (")
        .next()
        .unwrap()
        .to_string()
}

fn write(path: &Path, text: &str) -> PathBuf {
    std::fs::write(path, text).unwrap();
    path.to_path_buf()
}

fn register(network: &str, data: &Path, user: &str, password: &str) {
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
    let sn_port = free_port_block(std::process::id() as u16 ^ 0x0c0f);
    // 192.0.2.1 (TEST-NET-1) is no address of this host: had the file's `listen` won over the
    // flag, the server could not start.
    let server_toml = write(
        &dir.path().join("login.toml"),
        &format!(
            "data = {:?}\nlisten = \"192.0.2.1:4433\"\nbootstrap = [\"127.0.0.1:{sn_port}\"]\n\
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
        listed.contains(&format!("127.0.0.1:{sn_port}")),
        "the file's bootstrap list: {listed}"
    );

    let password = "a passphrase from the config";
    let sn_data = dir.path().join("snode");
    register(&network, &sn_data, "snode", password);
    let sn_toml = write(
        &dir.path().join("snode.toml"),
        &format!(
            "network = {network:?}\ndata = {sn_data:?}\nuser = \"snode\"\n\
             listen = \"127.0.0.1:{sn_port}\"\nsupernode = true\nmax_clients = 10\n"
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
    wait_in(
        &sn_out,
        &[&format!(
            "node listening on 127.0.0.1:{sn_port} (role: Force"
        )],
    );

    let dora_data = dir.path().join("dora");
    register(&network, &dora_data, "dora", password);
    let dora_port = free_port_block(41);
    let dora_toml = write(
        &dir.path().join("dora.toml"),
        &format!(
            "network = {network:?}\ndata = {dora_data:?}\nuser = \"dora\"\n\
             listen = \"192.0.2.1:4000\"\nno_supernode = true\nsearch = [\"snode\"]\n"
        ),
    );
    let mut dora = natter()
        .args(["node", "--listen", &format!("127.0.0.1:{dora_port}")])
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
            &format!("node listening on 127.0.0.1:{dora_port} (role: Forbid"),
            &format!("attached to super node 127.0.0.1:{sn_port}"),
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
