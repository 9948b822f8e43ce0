//! Binding a node's sockets before its runtime starts.
//!
//! An ordinary node binds one UDP socket, on any port. A node that may be a super node binds
//! more: its STUN server's second port (or its alternate address) and TCP on its main port
//! and its two fallback ports, all derived from its listen port. On port 0 the system picks
//! the main port, and the others must be free too: this binds the main UDP socket on port 0,
//! derives the rest from the port it got, and binds them, trying another port when one of
//! them is taken. Every socket is kept and handed to the runtime, so no port is released and
//! taken again in between.

use std::io;
use std::net::SocketAddr;

use natter_overlay::node::{NodeConfig, RolePolicy};
use natter_transport::runtime::{BoundSockets, RuntimeConfig};

/// Tries before giving up on finding a free block of ports.
const TRIES: usize = 64;

/// Bind the sockets of a node configured by `cfg`, setting `cfg.listen` to the address
/// bound. The error names the address that failed.
pub(crate) fn bind(cfg: &mut NodeConfig) -> Result<BoundSockets, (SocketAddr, io::Error)> {
    let listen = cfg.listen;
    if cfg.role == RolePolicy::Forbid {
        let s = std::net::UdpSocket::bind(listen).map_err(|e| (listen, e))?;
        cfg.listen = s.local_addr().map_err(|e| (listen, e))?;
        return Ok(BoundSockets {
            udp: vec![s],
            tcp: Vec::new(),
        });
    }
    if listen.port() != 0 {
        return bind_all(cfg, None);
    }
    let mut last = None;
    for _ in 0..TRIES {
        let first = std::net::UdpSocket::bind(listen).map_err(|e| (listen, e))?;
        cfg.listen = first.local_addr().map_err(|e| (listen, e))?;
        match bind_all(cfg, Some(first)) {
            Ok(s) => return Ok(s),
            Err((addr, e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::AddrInUse | io::ErrorKind::InvalidInput
                ) =>
            {
                last = Some((addr, e));
            }
            Err(e) => return Err(e),
        }
    }
    cfg.listen = listen;
    Err(last.unwrap_or_else(|| (listen, io::ErrorKind::AddrInUse.into())))
}

/// Bind what `cfg` asks for; `first` is the listen UDP socket when already bound.
fn bind_all(
    cfg: &NodeConfig,
    first: Option<std::net::UdpSocket>,
) -> Result<BoundSockets, (SocketAddr, io::Error)> {
    let config = RuntimeConfig {
        udp: cfg.bind_addresses(),
        tcp: cfg.tcp_listen_addresses(),
    };
    // Ports derived from a main port near the top of the range would wrap around.
    if first.is_some() && cfg.listen.port() > u16::MAX - 16 {
        return Err((cfg.listen, io::ErrorKind::InvalidInput.into()));
    }
    let mut out = BoundSockets::default();
    for a in &config.udp {
        match (&first, *a == cfg.listen) {
            (Some(_), true) => {}
            _ => out
                .udp
                .push(std::net::UdpSocket::bind(a).map_err(|e| (*a, e))?),
        }
    }
    if let Some(first) = first {
        // The listen address comes first: it is the default source.
        out.udp.insert(0, first);
    }
    for (a, tls) in &config.tcp {
        out.tcp
            .push((std::net::TcpListener::bind(a).map_err(|e| (*a, e))?, *tls));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use natter_core::testkit::TestNetwork;
    use std::time::Instant;

    #[test]
    fn a_super_node_on_port_0_gets_a_free_block() {
        let net = TestNetwork::new(3);
        let mut cfg = NodeConfig::new(
            net.identity("snode"),
            [1; 32],
            natter_transport::wall_clock(),
            Instant::now(),
            "127.0.0.1:0".parse().unwrap(),
        );
        cfg.role = RolePolicy::Force;
        let s = bind(&mut cfg).unwrap();
        let p = cfg.listen.port();
        assert_ne!(p, 0);
        let udp: Vec<u16> = s
            .udp
            .iter()
            .map(|s| s.local_addr().unwrap().port())
            .collect();
        let tcp: Vec<u16> = s
            .tcp
            .iter()
            .map(|(l, _)| l.local_addr().unwrap().port())
            .collect();
        assert_eq!(udp, [p, p + 1]);
        assert_eq!(tcp, [p, p + 1, p + 2]);
        // Taken now: binding the same block again fails with its address.
        let mut again = cfg.clone();
        let (addr, _) = bind(&mut again).unwrap_err();
        assert_eq!(addr.port(), p);
    }
}
