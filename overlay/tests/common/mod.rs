//! Helpers shared by the integration tests: what `natter-fixtures` gives every crate's tests
//! (a login server, certified identities, ports bound for real, waits with a deadline), and
//! [`sim`] for the scenarios in the simulator.
#![allow(dead_code, unused_imports)]

pub mod sim;

pub use natter_fixtures::{
    enrol, listens_on, on_free_ports, refusing_tcp, search_from as search, silent_udp, spawn_node,
    wait_until, LoginServer,
};
