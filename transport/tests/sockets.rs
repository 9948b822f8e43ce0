//! UDP sockets a machine opens and closes on demand (`StreamCommand::BindUdp` / `CloseUdp`),
//! over real sockets on loopback: what arrives on one is handed in with its address as
//! `local`, what the machine sends from it leaves by it, and once closed it is gone.

use std::collections::VecDeque;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use bytes::Bytes;
use natter_core::sansio::{Destination, Input, Machine, StreamCommand, Transmit};
use natter_transport::runtime::{Runtime, RuntimeConfig};

/// Echoes every datagram back from the socket it arrived on; opens and closes sockets when
/// told to.
#[derive(Default)]
struct Echo {
    commands: VecDeque<StreamCommand>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<(u64, Option<SocketAddr>)>,
}

impl Machine for Echo {
    type Event = (u64, Option<SocketAddr>);

    fn handle_input(&mut self, _now: Instant, input: Input<'_>) {
        match input {
            Input::Datagram {
                source,
                local,
                data,
            } => self.transmits.push_back(Transmit {
                destination: Destination::Udp(source),
                source: Some(local),
                payload: Bytes::copy_from_slice(data),
                ttl: None,
            }),
            Input::UdpBound { token, local } => self.events.push_back((token, local)),
            _ => {}
        }
    }

    fn handle_timeout(&mut self, _now: Instant) {}

    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    fn poll_event(&mut self) -> Option<Self::Event> {
        self.events.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    fn poll_stream_command(&mut self) -> Option<StreamCommand> {
        self.commands.pop_front()
    }
}

/// Sends `what` to `to` and returns the answer and where it came from, if one came.
fn ask(client: &UdpSocket, to: SocketAddr, what: &[u8]) -> Option<(Vec<u8>, SocketAddr)> {
    client.send_to(what, to).unwrap();
    let mut buf = [0u8; 64];
    match client.recv_from(&mut buf) {
        Ok((n, from)) => Some((buf[..n].to_vec(), from)),
        Err(_) => None,
    }
}

#[test]
fn a_machine_opens_uses_and_closes_udp_sockets_of_its_own() {
    let config = RuntimeConfig {
        udp: vec!["127.0.0.1:0".parse().unwrap()],
        tcp: Vec::new(),
    };
    let rt = Runtime::spawn(config, |_, _| Echo::default()).unwrap();
    let main = rt.udp_addrs()[0];
    rt.command(move |m, _| {
        m.commands.push_back(StreamCommand::BindUdp {
            token: 7,
            near: main,
        })
    });
    let (ev, _) = rt.wait_for(Duration::from_secs(5), |_| true);
    let Some((7, Some(fresh))) = ev else {
        panic!("no socket: {ev:?}")
    };
    assert_eq!(fresh.ip(), main.ip());
    assert_ne!(fresh.port(), main.port());

    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    // Each socket answers from itself.
    assert_eq!(ask(&client, fresh, b"one"), Some((b"one".to_vec(), fresh)));
    assert_eq!(ask(&client, main, b"two"), Some((b"two".to_vec(), main)));

    // Closed: nothing answers there any more; the driver's own socket still does.
    rt.command(move |m, _| {
        m.commands
            .push_back(StreamCommand::CloseUdp { local: fresh })
    });
    // A command runs before the loop drains, so the socket is closed once the next one ran.
    rt.command(|_, _| ());
    assert_eq!(ask(&client, fresh, b"three"), None);
    assert_eq!(ask(&client, main, b"four"), Some((b"four".to_vec(), main)));
    // The driver's own sockets are never closed this way.
    rt.command(move |m, _| {
        m.commands
            .push_back(StreamCommand::CloseUdp { local: main })
    });
    rt.command(|_, _| ());
    assert_eq!(ask(&client, main, b"five"), Some((b"five".to_vec(), main)));
    rt.shutdown().unwrap();
}
