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
    let (srv, addrs) = net.public_host("srv", 2)?;
    let (a, b) = (addrs[0], addrs[1]);
    let data = dir.join("login");
    let mut login = net.spawn(
        &srv,
        natter(),
        &[
            "login-server",
            "--listen",
            &format!("{a}:4433"),
            "--data",
            data.to_str().unwrap(),
            "--bootstrap",
            &format!("{a}:4000"),
        ],
        &[],
    )?;
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
    let mut sn = start(
        net,
        dir,
        &network,
        &srv,
        "node",
        "snode",
        a,
        &["--supernode", "--stun-alternate", &format!("{b}:4001")],
    )?;
    sn.wait_for(&["node listening"], WAIT)?;
    Ok(network)
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
    net.spawn(ns, natter(), &args, &[("NATTER_PASSWORD", PASSWORD)])
}
