//! Helpers shared by the integration tests: logging users in and searching over real sockets
//! (the loopback tests), and [`sim`] for the scenarios in the simulator.
#![allow(dead_code)]

pub mod sim;

use std::time::Duration;

use natter_core::crypto::UserName;
use natter_core::overlay::SearchOutcome;
use natter_overlay::node::{Node, NodeEvent};
use natter_transport::runtime::Runtime;

use natter_core::crypto::{Capabilities, LocalIdentity};
use natter_core::login::client::{LoginClientEvent, Operation};
use natter_core::login::proto::Version;
use natter_server::password::HashParams;
use natter_server::runtime::{LoginServerHandle, LoginServerOptions};
use natter_transport::login::client::{login, run_operations, DeviceStore};
use natter_transport::login::network::NetworkFile;

/// The client version the tests log in with.
pub const V: Version = Version::new(0, 1, 0);
const PASSWORD: &str = "loopback passphrase";

/// Register `user` at the login server of `net` and log its device in (keys kept under
/// `dir/user`).
pub fn enrol(net: &NetworkFile, dir: &std::path::Path, user: &str) -> LocalIdentity {
    let store = DeviceStore::open(dir.join(user)).unwrap();
    let (device, _) = store.identity().unwrap();
    let ev = run_operations(
        net,
        &device,
        V,
        true,
        vec![Operation::Register {
            user: user.into(),
            password: PASSWORD.into(),
        }],
        Duration::from_secs(10),
    )
    .unwrap();
    assert!(ev.contains(&LoginClientEvent::Registered), "{ev:?}");
    let li = login(
        net,
        &store,
        user,
        Some(PASSWORD),
        V,
        Duration::from_secs(10),
    )
    .unwrap();
    LocalIdentity {
        device: li.device,
        certificate: li.certificate,
        trusted: net.trusted().unwrap(),
        capabilities: Capabilities::VOICE,
    }
}

/// A login server on loopback keeping its data under `dir/login`, with cheap password hashing
/// (the tests log many users in; the real parameters are measured in `benches/login_load`).
pub fn login_server(dir: &std::path::Path) -> LoginServerHandle {
    let mut opts = LoginServerOptions::new(dir.join("login"), "127.0.0.1:0".parse().unwrap());
    opts.hash_params = HashParams {
        memory_kib: 256,
        iterations: 1,
        parallelism: 1,
    };
    LoginServerHandle::start(opts).unwrap()
}

/// Search the global index from `node` for `user` and wait (up to 10 s) for the outcome.
/// Other events that arrive meanwhile are dropped.
pub fn search(node: &Runtime<Node>, user: &str) -> SearchOutcome {
    let name = UserName::parse(user).unwrap();
    let id = node.command(move |m, now| m.search(now, name));
    let (found, _) = node.wait_for(
        Duration::from_secs(10),
        |e| matches!(e, NodeEvent::Search { id: i, .. } if *i == id),
    );
    match found {
        Some(NodeEvent::Search { outcome, .. }) => outcome,
        other => panic!("no answer to the search for {user}: {other:?}"),
    }
}
