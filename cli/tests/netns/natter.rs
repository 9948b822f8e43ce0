//! Real `natter` processes in a [`Net`]: a login server and a bootstrap super node on a public
//! host ([`servers`]), and nodes or clients registered and started anywhere ([`start`]).

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use super::{Net, Proc};

/// Every user's password.
pub const PASSWORD: &str = "a passphrase behind the NAT";
/// How long a process may take to print what a test waits for.
pub const WAIT: Duration = Duration::from_secs(20);

/// The `natter` binary under test.
pub fn natter() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_natter"))
}

/// A login server and a super node (with a second address for NAT classification) on a new
/// public host `srv`, the super node listening on `198.18.K.10:4000`; returns the network
/// file's path.
pub fn servers(net: &mut Net, dir: &Path) -> Result<String, String> {
    Ok(servers_with(net, dir, 1, true)?.network)
}

/// A running network: the network file and its super nodes.
pub struct Servers {
    /// The network file's path.
    pub network: String,
    /// Each super node: its namespace, its main address (port 4000) and its process.
    pub super_nodes: Vec<(String, Ipv4Addr, Proc)>,
}

/// A login server on public host `srv` (with the first super node) and `count` super nodes,
/// each on a public host of its own after the first (`srv`, `sn1`, `sn2`...), all listed as
/// bootstrap super nodes; with `alternate` each has a second address (`--stun-alternate`),
/// else each has one address and must pair with another for NAT classification.
pub fn servers_with(
    net: &mut Net,
    dir: &Path,
    count: usize,
    alternate: bool,
) -> Result<Servers, String> {
    let addresses = if alternate { 2 } else { 1 };
    let mut hosts = vec![net.public_host("srv", addresses)?];
    for i in 1..count {
        hosts.push(net.public_host(&format!("sn{i}"), addresses)?);
    }
    let a = hosts[0].1[0];
    let data = dir.join("login");
    let mut args = vec![
        "login-server".to_string(),
        "--listen".into(),
        format!("{a}:4433"),
        "--data".into(),
        data.to_str().unwrap().into(),
    ];
    for (_, addrs) in &hosts {
        args.push("--bootstrap".into());
        args.push(format!("{}:4000", addrs[0]));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut login = net.spawn(&hosts[0].0, natter(), &args, &[])?;
    login.wait_for(&["network file: "], WAIT)?;
    let network = login
        .line("network file: ")
        .unwrap()
        .strip_prefix("network file: ")
        .unwrap()
        .split(" (")
        .next()
        .unwrap()
        .to_string();
    let mut super_nodes = Vec::new();
    for (i, (ns, addrs)) in hosts.into_iter().enumerate() {
        let alt = addrs.get(1).map(|b| format!("{b}:4001"));
        let mut extra = vec!["--supernode"];
        if let Some(alt) = &alt {
            extra.extend(["--stun-alternate", alt]);
        }
        let user = if i == 0 {
            "snode".to_string()
        } else {
            format!("snode{i}")
        };
        let mut sn = start(net, dir, &network, &ns, "node", &user, addrs[0], &extra)?;
        sn.wait_for(&["node listening"], WAIT)?;
        super_nodes.push((ns, addrs[0], sn));
    }
    Ok(Servers {
        network,
        super_nodes,
    })
}

/// Register `user` from namespace `ns` (device data under `dir`) and start `natter
/// SUBCOMMAND` (`node` or `client`) for it there, listening on `ip:4000`, with `extra`
/// options.
#[allow(clippy::too_many_arguments)]
pub fn start(
    net: &mut Net,
    dir: &Path,
    network: &str,
    ns: &str,
    subcommand: &str,
    user: &str,
    ip: Ipv4Addr,
    extra: &[&str],
) -> Result<Proc, String> {
    start_inner(net, dir, network, ns, subcommand, user, ip, extra, false)
}

/// [`start`] a `natter client` whose commands [`Proc::send`] types.
#[allow(dead_code)]
pub fn start_client_with_input(
    net: &mut Net,
    dir: &Path,
    network: &str,
    ns: &str,
    user: &str,
    ip: Ipv4Addr,
) -> Result<Proc, String> {
    start_inner(net, dir, network, ns, "client", user, ip, &[], true)
}

#[allow(clippy::too_many_arguments)]
fn start_inner(
    net: &mut Net,
    dir: &Path,
    network: &str,
    ns: &str,
    subcommand: &str,
    user: &str,
    ip: Ipv4Addr,
    extra: &[&str],
    input: bool,
) -> Result<Proc, String> {
    let data = dir.join(user);
    let data = data.to_str().unwrap();
    let pw = format!("NATTER_PASSWORD={PASSWORD}");
    let bin = natter().to_str().unwrap();
    let out = net.exec(
        ns,
        &[
            "env",
            &pw,
            bin,
            "register",
            "--user",
            user,
            "--network",
            network,
            "--data",
            data,
        ],
    )?;
    if !out.contains("registered") {
        return Err(format!("register {user}: {out}"));
    }
    let listen = format!("{ip}:4000");
    let mut args = vec![
        subcommand,
        "--user",
        user,
        "--network",
        network,
        "--data",
        data,
        "--listen",
        &listen,
    ];
    args.extend_from_slice(extra);
    // NATTER_LOG (say `debug`) reaches the processes, for their logs on standard error.
    let log = std::env::var("NATTER_LOG").unwrap_or_default();
    let mut env = vec![("NATTER_PASSWORD", PASSWORD)];
    if !log.is_empty() {
        env.push(("NATTER_LOG", log.as_str()));
    }
    if input {
        net.spawn_with_input(ns, natter(), &args, &env)
    } else {
        net.spawn(ns, natter(), &args, &env)
    }
}

/// The options of a `natter client` that dials `callee` once joined, hangs up `hangup_after`
/// seconds (a number, as text) after the call connected and exits.
pub fn caller_args<'a>(callee: &'a str, hangup_after: &'a str) -> [&'a str; 7] {
    [
        "--call",
        callee,
        "--hangup-after",
        hangup_after,
        "--exit-after-call",
        "--timeout",
        "30",
    ]
}
