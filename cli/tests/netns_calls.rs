//! Calls between real `natter client` processes over every call topology, in network
//! namespaces behind real NAT routers and firewalls (see `netns/mod.rs`): a login server and
//! one super node on a public host, a callee that answers at once, and a caller that dials it,
//! hangs up after a few seconds and exits. Each test checks the path the call ends up on (as
//! each side prints it), media both ways (each side hears what the other sent), and prints the setup
//! times (with `--nocapture`). The last test breaks the direct path mid-call and restores it.
//! Needs root, iproute2 and nftables; skipped with a clear note otherwise, unless
//! `NATTER_REQUIRE_NETNS` is set.

#![cfg(target_os = "linux")]

mod netns;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use netns::natter::{self, servers, start, WAIT};
use netns::{net_or_skip, Nat, Net, Place, Proc};

/// A network with a login server and a super node on a public host: the net, the directory
/// of everyone's data and the network file.
fn network(test: &str) -> Option<(Net, tempfile::TempDir, String)> {
    let mut net = net_or_skip(test)?;
    let dir = tempfile::tempdir().unwrap();
    let network = servers(&mut net, dir.path()).unwrap();
    Some((net, dir, network))
}

/// A call under way between two `natter client`s.
struct Call {
    test: &'static str,
    net: Net,
    _dir: tempfile::TempDir,
    caller: Proc,
    callee: Proc,
    /// The caller hangs up this long after the call connected.
    hangup_after: u32,
}

/// The number that follows `key` in `line`.
fn number_after(line: &str, key: &str) -> f64 {
    line.split_once(key)
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.trim_end_matches(['%', ')']).parse().ok())
        .unwrap_or_else(|| panic!("no number after {key:?} in {line:?}"))
}

/// The frame count of a `call ended: ... (N media frames received)` line.
fn frames_at_end(line: &str) -> f64 {
    let (_, tail) = line.rsplit_once('(').expect(line);
    tail.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no frame count in {line:?}"))
}

/// The `call path ...` lines a side printed, shortened to `KIND (REASON)`.
fn paths(p: &Proc) -> Vec<String> {
    p.seen
        .iter()
        .filter_map(|l| l.strip_prefix("call path "))
        .map(|l| l.split(')').next().unwrap_or(l).to_string() + ")")
        .collect()
}

impl Drop for Call {
    /// With `NATTER_NETNS_LOGS=DIR`, each side's output and log go to
    /// `DIR/TEST.{caller,callee}.{out,err}` (`NATTER_LOG=debug` for more).
    fn drop(&mut self) {
        let Some(dir) = std::env::var_os("NATTER_NETNS_LOGS") else {
            return;
        };
        let dir = std::path::PathBuf::from(dir);
        let _ = std::fs::create_dir_all(&dir);
        for (who, p) in [("caller", &mut self.caller), ("callee", &mut self.callee)] {
            p.mark();
            let base = format!("{}.{who}", self.test);
            let _ = std::fs::write(dir.join(base.clone() + ".out"), p.seen.join("\n") + "\n");
            let _ = std::fs::write(dir.join(base + ".err"), p.stderr_lines().join("\n") + "\n");
        }
    }
}

impl Call {
    /// Start the callee (`--auto-answer`) in namespace `callee.0` on address `callee.1`, wait
    /// until it is attached, then the caller, which dials it once joined and hangs up
    /// `hangup_after` seconds after the call connected.
    fn start(
        test: &'static str,
        (mut net, dir, network): (Net, tempfile::TempDir, String),
        caller: (&str, Ipv4Addr),
        callee: (&str, Ipv4Addr),
        hangup_after: u32,
    ) -> Call {
        let mut callee = start(
            &mut net,
            dir.path(),
            &network,
            callee.0,
            "client",
            "callee",
            callee.1,
            &["--auto-answer"],
        )
        .unwrap();
        callee.wait_for(&["attached to super node"], WAIT).unwrap();
        let after = hangup_after.to_string();
        let caller = start(
            &mut net,
            dir.path(),
            &network,
            caller.0,
            "client",
            "caller",
            caller.1,
            &natter::caller_args("callee", &after),
        )
        .unwrap();
        Call {
            test,
            net,
            _dir: dir,
            caller,
            callee,
            hangup_after,
        }
    }

    /// Wait for the caller to hang up and exit 0; check that the call ended on `caller_kind`
    /// (as the caller prints it) and `callee_kind` (as the callee does), started on the relay,
    /// and carried media both ways (each side heard what the other sent); print the setup times.
    fn finish(mut self, caller_kind: &str, callee_kind: &str) {
        let within = WAIT + Duration::from_secs(u64::from(self.hangup_after));
        self.caller
            .wait_for(
                &[
                    "call connected",
                    "first media received",
                    "call ended: hung up",
                    " frames sent, ",
                ],
                within,
            )
            .unwrap();
        assert_eq!(
            self.net.wait_exit(&self.caller, Duration::from_secs(5)),
            Some(0),
            "the caller exits 0 after a connected call; printed {:#?}",
            self.caller.seen
        );
        self.callee
            .wait_for(
                &[
                    "incoming call from caller",
                    "call connected",
                    "first media received",
                    "call ended: the peer hung up",
                    " frames sent, ",
                ],
                Duration::from_secs(5),
            )
            .unwrap();
        let (caller_paths, callee_paths) = (paths(&self.caller), paths(&self.callee));
        eprintln!(
            "{}: caller paths {caller_paths:?}; callee paths {callee_paths:?}",
            self.test
        );
        for (who, p, kind) in [
            ("caller", &self.caller, caller_kind),
            ("callee", &self.callee, callee_kind),
        ] {
            let paths = paths(p);
            assert!(
                paths.first().is_some_and(|k| k.starts_with("relay-")),
                "{who}: the call starts on the relay: {paths:?}"
            );
            // The caller chooses: it never follows the callee (a packet the callee sent on
            // the relay just before following must not move the caller back).
            assert!(
                who == "callee" || !paths.iter().any(|k| k.ends_with("(Peer)")),
                "{who} followed the peer: {paths:?}"
            );
            let last = paths.last().unwrap();
            assert!(
                last.starts_with(&format!("{kind} (")),
                "{who}: the call ends on {kind}, not {last}: {:#?}",
                p.seen
            );
        }
        // Media both ways: each side received what the other sent, but for a few frames in
        // flight when the call ended (counted by the frames themselves, not by the clock: a
        // loaded machine sends fewer frames, and that is no loss).
        let sent = |p: &Proc| {
            let line = p.line(" frames sent, ").unwrap();
            number_after(line, "call audio: ")
        };
        let secs = self.hangup_after;
        let mut frames = Vec::new();
        for (who, p, peer) in [
            ("caller", &self.caller, &self.callee),
            ("callee", &self.callee, &self.caller),
        ] {
            let ended = p.line("call ended").unwrap();
            let n = frames_at_end(ended);
            let peer_sent = sent(peer);
            assert!(
                n > 0.0 && n <= peer_sent && n >= 0.95 * peer_sent - 25.0,
                "{who}: received {n} of the {peer_sent} frames the other side sent: {ended}"
            );
            frames.push(n);
        }
        // How long the caller took to reach its final path (when it moved off the relay),
        // as the lines reached the test.
        let connected = self.caller.line_at("call connected").unwrap();
        let final_path = (caller_paths.len() > 1).then(|| {
            let i = self
                .caller
                .seen
                .iter()
                .rposition(|l| l.starts_with("call path "))
                .unwrap();
            self.caller.seen_at[i].saturating_duration_since(connected)
        });
        match final_path {
            Some(d) => eprintln!(
                "{}: the caller moved to its last path, {caller_kind}, {:.0} ms after the call \
                 connected",
                self.test,
                d.as_secs_f64() * 1000.0
            ),
            None => eprintln!("{}: the caller stayed on {caller_kind}", self.test),
        }
        let first_media =
            |p: &Proc| number_after(p.line("first media received").unwrap(), "received ");
        let signalling = |p: &Proc| number_after(p.line("call connected").unwrap(), "took ");
        eprintln!(
            "{}: setup: caller first media {:.1} ms (from the dial), callee first media {:.1} ms \
             (from the invite), signalling caller {:.1} ms / callee {:.1} ms; frames received \
             caller {} / callee {} in {secs} s",
            self.test,
            first_media(&self.caller),
            first_media(&self.callee),
            signalling(&self.caller),
            signalling(&self.callee),
            frames[0],
            frames[1]
        );
    }
}

/// A three-second call from an endpoint at `caller` to one at `callee`, each on its own site;
/// it must end on `caller_kind` and `callee_kind`.
fn call_between(
    test: &'static str,
    caller: Place,
    callee: Place,
    caller_kind: &str,
    callee_kind: &str,
) {
    let Some((mut net, dir, network)) = network(test) else {
        return;
    };
    let a = net.endpoint("a", caller).unwrap();
    let b = net.endpoint("b", callee).unwrap();
    let call = Call::start(
        test,
        (net, dir, network),
        (&a.ns, a.addr),
        (&b.ns, b.addr),
        3,
    );
    call.finish(caller_kind, callee_kind);
}

/// (1) Two public hosts (on different /24s) call directly.
#[test]
fn call_between_two_public_hosts_goes_direct() {
    call_between(
        "call_between_two_public_hosts_goes_direct",
        Place::Public,
        Place::Public,
        "direct",
        "direct",
    );
}

/// (2) A caller behind a port-restricted NAT calls a public host: direct.
#[test]
fn call_from_behind_a_port_restricted_nat_to_a_public_host_goes_direct() {
    call_between(
        "call_from_behind_a_port_restricted_nat_to_a_public_host_goes_direct",
        Place::Behind(Nat::PortRestricted),
        Place::Public,
        "direct",
        "direct",
    );
}

/// (3) Both behind port-restricted NATs whose firewalls drop UDP: relayed over TCP on both
/// sides.
#[test]
fn call_between_two_udp_firewalled_sites_is_relayed_over_tcp() {
    call_between(
        "call_between_two_udp_firewalled_sites_is_relayed_over_tcp",
        Place::Firewalled(Nat::PortRestricted),
        Place::Firewalled(Nat::PortRestricted),
        "relay-tcp",
        "relay-tcp",
    );
}

/// (4) Both behind port-restricted NATs: hole punching makes a direct path.
#[test]
fn call_between_two_port_restricted_nats_punches_through() {
    call_between(
        "call_between_two_port_restricted_nats_punches_through",
        Place::Behind(Nat::PortRestricted),
        Place::Behind(Nat::PortRestricted),
        "direct",
        "direct",
    );
}

/// (5) Both behind symmetric NATs: no direct path, the call stays on the super node's relay
/// (over UDP on both sides: the callee moves its leg off its TCP link).
#[test]
fn call_between_two_symmetric_nats_stays_relayed() {
    call_between(
        "call_between_two_symmetric_nats_stays_relayed",
        Place::Behind(Nat::Symmetric),
        Place::Behind(Nat::Symmetric),
        "relay-udp",
        "relay-udp",
    );
}

/// (6) Two hosts behind one NAT call each other on their private addresses.
#[test]
fn call_between_two_hosts_behind_one_nat_stays_on_the_lan() {
    let test = "call_between_two_hosts_behind_one_nat_stays_on_the_lan";
    let Some((mut net, dir, network)) = network(test) else {
        return;
    };
    let site = net.nat_site("a", Nat::PortRestricted, false).unwrap();
    let (b, b_addr) = net.add_host(&site, "b").unwrap();
    let call = Call::start(
        test,
        (net, dir, network),
        (&site.host, site.private),
        (&b, b_addr),
        3,
    );
    call.finish("direct-lan", "direct-lan");
}

/// The frame count of the next `call stats` line from index `mark` on, and the index after it.
fn next_stats(p: &mut Proc, mark: usize) -> (f64, usize) {
    let (i, line) = p
        .wait_after(mark, "call stats", Duration::from_secs(3))
        .unwrap();
    (number_after(&line, "frames in "), i + 1)
}

/// Media keeps arriving at `p`: the frame count grows between two `call stats` lines from
/// `mark` on (how fast is the machine's business, not the path's).
fn frames_keep_growing(p: &mut Proc, mark: usize, who: &str) {
    let (a, next) = next_stats(p, mark);
    let (b, _) = next_stats(p, next);
    assert!(
        b > a,
        "{who}: frames in went from {a} to {b}: {:#?}",
        p.seen
    );
}

/// (7) The direct path between two port-restricted NATs breaks mid-call (UDP between the two
/// NATs is cut in the core; the super node stays reachable): the caller moves the call to the
/// relay within about a second and media keeps flowing; once UDP is back the call returns to
/// the direct path (its re-checks run once a second after the first 3 s, and a path that
/// failed must answer 3 in a row), and ends cleanly.
#[test]
fn a_call_survives_losing_its_direct_path_and_returns_to_it() {
    let test = "a_call_survives_losing_its_direct_path_and_returns_to_it";
    let Some((mut net, dir, network)) = network(test) else {
        return;
    };
    let a = net.nat_site("a", Nat::PortRestricted, false).unwrap();
    let b = net.nat_site("b", Nat::PortRestricted, false).unwrap();
    let mut call = Call::start(
        test,
        (net, dir, network),
        (&a.host, a.private),
        (&b.host, b.private),
        15,
    );
    call.caller
        .wait_for(&["call path direct (Better)"], WAIT)
        .unwrap();
    call.callee
        .wait_for(&["call path direct (Peer)"], Duration::from_secs(3))
        .unwrap();
    // Past the fast checks of the first 3 s (the 4th stats line comes about 4 s after the
    // call connected), so the recovery below runs at the steady re-check pace.
    let mut next = 0;
    for _ in 0..4 {
        next = next_stats(&mut call.caller, next).1;
    }
    let (caller_mark, callee_mark) = (call.caller.mark(), call.callee.mark());

    // Cut: the caller finds the direct path dead and moves to the relay; the callee follows.
    call.net.block_udp_between(&a, &b).unwrap();
    let cut = Instant::now();
    let (i, _) = call
        .caller
        .wait_after(
            caller_mark,
            "call path relay-udp (Dead)",
            Duration::from_secs(3),
        )
        .unwrap();
    let to_relay = cut.elapsed();
    // The callee follows the caller (Peer), or, when the caller's packets through the relay
    // reach it late (a loaded machine), leaves the silent path by itself first (Dead).
    let (j, _) = call
        .callee
        .wait_after(callee_mark, "call path relay-udp (", Duration::from_secs(3))
        .unwrap();
    let callee_to_relay = cut.elapsed();
    eprintln!(
        "{test}: UDP cut: caller on the relay after {:.0} ms, callee after {:.0} ms",
        to_relay.as_secs_f64() * 1000.0,
        callee_to_relay.as_secs_f64() * 1000.0
    );
    assert!(
        to_relay < Duration::from_millis(1500),
        "the caller took {to_relay:?} to leave the dead path"
    );
    frames_keep_growing(&mut call.caller, i + 1, "caller on the relay");
    frames_keep_growing(&mut call.callee, j + 1, "callee on the relay");

    // Restored: back to the direct path.
    let (caller_mark, callee_mark) = (call.caller.mark(), call.callee.mark());
    call.net.unblock_udp_between(&a, &b).unwrap();
    let restored = Instant::now();
    let (i, _) = call
        .caller
        .wait_after(
            caller_mark,
            "call path direct (Better)",
            Duration::from_secs(6),
        )
        .unwrap();
    let to_direct = restored.elapsed();
    let (j, _) = call
        .callee
        .wait_after(
            callee_mark,
            "call path direct (Peer)",
            Duration::from_secs(3),
        )
        .unwrap();
    eprintln!(
        "{test}: UDP restored: caller back on the direct path after {:.0} ms, callee after {:.0} ms",
        to_direct.as_secs_f64() * 1000.0,
        restored.elapsed().as_secs_f64() * 1000.0
    );
    frames_keep_growing(&mut call.caller, i + 1, "caller back on the direct path");
    frames_keep_growing(&mut call.callee, j + 1, "callee back on the direct path");
    call.finish("direct", "direct");
}
