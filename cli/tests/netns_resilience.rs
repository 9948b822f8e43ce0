//! Calls and nodes that survive what real networks do to them, with real `natter` processes
//! in network namespaces behind real NAT routers (see `netns/mod.rs`): a login server and
//! three super nodes on public hosts. Needs root, iproute2 and nftables; skipped with a clear
//! note otherwise, unless `NATTER_REQUIRE_NETNS` is set.

#![cfg(target_os = "linux")]

mod netns;

use std::time::{Duration, Instant};

use netns::natter::{self, servers_with, WAIT};
use netns::{net_or_skip, Nat, Proc};

/// A node's NAT line, once printed.
fn nat_line(p: &mut Proc) -> String {
    p.wait_for(&["NAT: "], WAIT).unwrap();
    p.line("NAT: ").unwrap().to_string()
}

/// Super nodes with one address each: a node classifies its NAT through a partner super node
/// (the one it attached to asks another to answer "change IP" tests): a public host is open, a
/// port-restricted NAT is port-restricted, a symmetric NAT symmetric.
#[test]
fn nodes_classify_their_nat_with_single_address_super_nodes() {
    let test = "nodes_classify_their_nat_with_single_address_super_nodes";
    let Some(mut net) = net_or_skip(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let servers = servers_with(&mut net, dir.path(), 3, false).unwrap();
    let network = servers.network.clone();
    let (public, paddr) = net.public_host("public", 1).unwrap();
    let restricted = net.nat_site("prc", Nat::PortRestricted, false).unwrap();
    let symmetric = net.nat_site("sym", Nat::Symmetric, false).unwrap();
    let ordinary = ["--no-supernode"];
    let d = dir.path();
    let mut open = natter::start(
        &mut net, d, &network, &public, "node", "olive", paddr[0], &ordinary,
    )
    .unwrap();
    let mut prc = natter::start(
        &mut net,
        d,
        &network,
        &restricted.host,
        "node",
        "pia",
        restricted.private,
        &ordinary,
    )
    .unwrap();
    let mut sym = natter::start(
        &mut net,
        d,
        &network,
        &symmetric.host,
        "node",
        "simon",
        symmetric.private,
        &ordinary,
    )
    .unwrap();
    let (o, p, s) = (nat_line(&mut open), nat_line(&mut prc), nat_line(&mut sym));
    println!("public host: {o}\nport-restricted: {p}\nsymmetric: {s}");
    assert!(o.contains("open (public address"), "{o}");
    assert!(p.contains("(port-restricted)"), "{p}");
    assert!(s.contains("(symmetric)"), "{s}");
}

/// What happens to a call in [`disturb`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Disturbance {
    /// One side's NAT forwards nothing for 2 s and comes back without its state.
    NatRestart,
    /// One side's NAT moves to a new public address.
    NewAddress,
    /// The super node relaying the call (both sides behind symmetric NATs) is killed -9.
    RelayCrash,
    /// A super node the callee is attached to (that does not relay the direct call) is
    /// killed -9.
    SignallingCrash,
    /// The device itself gets a new address on its LAN (a new DHCP lease, another network
    /// behind the same NAT); both sides listen on 0.0.0.0.
    DeviceMove,
}

/// One run's figures: the longest audio gap each side heard, the caller's path at the end,
/// how long after the network allowed it the call was back on its best path.
#[derive(Debug)]
struct Row {
    caller_gap_ms: f64,
    callee_gap_ms: f64,
    path_after: String,
    back_ms: Option<f64>,
}

/// The longest audio gap a side heard from line `mark` on, not counting time before `up`
/// (while the network let nothing through): from its "media resumed after a gap of N ms"
/// lines (0 when none: gaps under 100 ms are not reported).
fn longest_gap(p: &Proc, mark: usize, up: Instant) -> f64 {
    p.seen
        .iter()
        .zip(&p.seen_at)
        .skip(mark)
        .filter_map(|(l, at)| {
            let (_, rest) = l.split_once("media resumed after a gap of ")?;
            let gap = rest.split_whitespace().next()?.parse::<f64>().ok()?;
            let since_up = at.saturating_duration_since(up).as_secs_f64() * 1000.0;
            Some(gap.min(since_up))
        })
        .fold(0.0, f64::max)
}

/// A call between two `natter client`s behind NATs, a login server and three super nodes on
/// public hosts; once the call is on its best path, `what` happens (to the callee's side when
/// `callee_side`); the call must go on and end when the caller hangs up.
fn disturb(test: &str, what: Disturbance, callee_side: bool) -> Option<Row> {
    let mut net = net_or_skip(test)?;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let servers = servers_with(&mut net, d, 3, true).unwrap();
    let network = servers.network.clone();
    let nat = if what == Disturbance::RelayCrash {
        Nat::Symmetric
    } else {
        Nat::PortRestricted
    };
    let mut a = net.nat_site("a", nat, false).unwrap();
    let mut b = net.nat_site("b", nat, false).unwrap();
    // NATTER_RESILIENCE_HANGUP=S makes every call last S seconds (to watch one longer).
    let hangup = std::env::var("NATTER_RESILIENCE_HANGUP")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(16);
    let any = what == Disturbance::DeviceMove;
    let listen = |ip: std::net::Ipv4Addr| {
        if any {
            std::net::Ipv4Addr::UNSPECIFIED
        } else {
            ip
        }
    };
    let mut callee = natter::start(
        &mut net,
        d,
        &network,
        &b.host,
        "client",
        "callee",
        listen(b.private),
        &["--auto-answer"],
    )
    .unwrap();
    callee.wait_for(&["attached to super node"], WAIT).unwrap();
    let after = hangup.to_string();
    let mut caller = natter::start(
        &mut net,
        d,
        &network,
        &a.host,
        "client",
        "caller",
        listen(a.private),
        &natter::caller_args("callee", &after),
    )
    .unwrap();
    let best = if nat == Nat::Symmetric {
        "relay-udp"
    } else {
        "direct"
    };
    caller
        .wait_for(&[&format!("call path {best} (")], WAIT)
        .unwrap();
    // Settled: past the fast checks of the first 3 s.
    std::thread::sleep(Duration::from_secs(4));
    let (mark_a, mark_b) = (caller.mark(), callee.mark());
    let up = match what {
        Disturbance::NatRestart => {
            let site = if callee_side { &b } else { &a };
            net.restart_nat(site, Duration::from_secs(2)).unwrap();
            Instant::now()
        }
        Disturbance::NewAddress => {
            let site = if callee_side { &mut b } else { &mut a };
            net.move_nat(site).unwrap();
            Instant::now()
        }
        Disturbance::DeviceMove => {
            let site = if callee_side { &b } else { &a };
            let o = site.private.octets();
            let new = std::net::Ipv4Addr::new(o[0], o[1], o[2], 99);
            let gw = std::net::Ipv4Addr::new(o[0], o[1], o[2], 1);
            let shown = net
                .exec(&site.host, &["ip", "-o", "-4", "addr", "show"])
                .unwrap();
            let dev = shown
                .lines()
                .find(|l| l.contains(&format!(" {}/", site.private)))
                .and_then(|l| l.split_whitespace().nth(1))
                .unwrap()
                .to_string();
            let promote = format!("net.ipv4.conf.{dev}.promote_secondaries=1");
            for cmd in [
                vec!["sysctl", "-qw", "net.ipv4.conf.all.promote_secondaries=1"],
                vec!["sysctl", "-qw", &promote],
                vec!["ip", "addr", "add", &format!("{new}/24"), "dev", &dev],
                vec![
                    "ip",
                    "addr",
                    "del",
                    &format!("{}/24", site.private),
                    "dev",
                    &dev,
                ],
                vec!["ip", "route", "replace", "default", "via", &gw.to_string()],
            ] {
                let cmd: Vec<&str> = cmd.iter().map(|s| s.as_ref()).collect();
                net.exec(&site.host, &cmd).unwrap();
            }
            Instant::now()
        }
        Disturbance::RelayCrash | Disturbance::SignallingCrash => {
            let line = caller.last_line("call path relay-udp").unwrap().to_string();
            let relay = line
                .rsplit_once("super node at ")
                .map(|(_, a)| a.trim().trim_start_matches("UDP ").to_string())
                .unwrap();
            let at = if what == Disturbance::RelayCrash {
                relay
            } else {
                // One the callee is attached to, not the relay (when it can be told apart).
                let attached: Vec<String> = callee
                    .seen
                    .iter()
                    .filter_map(|l| l.strip_prefix("attached to super node "))
                    .filter_map(|l| l.split_whitespace().next())
                    .map(str::to_string)
                    .collect();
                attached
                    .iter()
                    .find(|a| **a != relay)
                    .or(attached.first())
                    .cloned()
                    .unwrap()
            };
            let i = servers
                .super_nodes
                .iter()
                .position(|(_, ip, _)| at.starts_with(&format!("{ip}:")))
                .unwrap_or_else(|| panic!("no super node at {at}"));
            net.kill(&servers.super_nodes[i].2);
            Instant::now()
        }
    };
    let within = WAIT + Duration::from_secs(hangup);
    // With NATTER_NETNS_LOGS=DIR each side's output and log go to DIR/TEST.{caller,callee}.
    let save = |who: &str, p: &Proc| {
        if let Some(dir) = std::env::var_os("NATTER_NETNS_LOGS") {
            let dir = std::path::PathBuf::from(dir);
            let _ = std::fs::create_dir_all(&dir);
            let text = p.seen.join("\n") + "\n--- stderr\n" + &p.stderr_lines().join("\n");
            let _ = std::fs::write(dir.join(format!("{test}.{who}")), text);
        }
    };
    caller.wait_after(mark_a, "call ended: ", within).unwrap();
    let ended = caller.last_line("call ended: ").unwrap().to_string();
    callee
        .wait_after(mark_b, "call ended: ", Duration::from_secs(5))
        .unwrap();
    let callee_ended = callee.last_line("call ended: ").unwrap().to_string();
    save("caller", &caller);
    save("callee", &callee);
    assert!(
        ended.contains("hung up") && callee_ended.contains("peer hung up"),
        "{test}: the call ended by itself: caller {ended:?}, callee {callee_ended:?}; caller \
         printed {:#?}; callee printed {:#?}",
        caller.seen,
        callee.seen
    );
    let paths: Vec<(Instant, String)> = caller
        .seen
        .iter()
        .zip(&caller.seen_at)
        .skip(mark_a)
        .filter_map(|(l, t)| l.strip_prefix("call path ").map(|p| (*t, p.to_string())))
        .collect();
    let path_after = paths.last().map_or(best.to_string(), |(_, p)| {
        p.split(' ').next().unwrap().to_string()
    });
    let back_ms = paths
        .iter()
        .filter(|(t, p)| *t >= up && p.starts_with(best))
        .map(|(t, _)| t.duration_since(up).as_secs_f64() * 1000.0)
        .next();
    let row = Row {
        caller_gap_ms: longest_gap(&caller, mark_a, up),
        callee_gap_ms: longest_gap(&callee, mark_b, up),
        path_after,
        back_ms,
    };
    let side = if callee_side { "callee" } else { "caller" };
    eprintln!(
        "RESILIENCE | {what:?} | {side} | caller heard gap {:.0} ms | callee heard gap {:.0} ms \
         | path after: {} | back on {best} after {} | caller paths after: {:?}",
        row.caller_gap_ms,
        row.callee_gap_ms,
        row.path_after,
        row.back_ms
            .map_or("-".to_string(), |b| format!("{b:.0} ms")),
        paths.iter().map(|(_, p)| p.as_str()).collect::<Vec<_>>()
    );
    Some(row)
}

/// Runs per case: `NATTER_RESILIENCE_RUNS` (default 1; the closing table uses 5).
fn runs() -> usize {
    std::env::var("NATTER_RESILIENCE_RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
}

/// Every run of one case survives, with the call back on its best path.
fn case(test: &str, what: Disturbance, callee_side: bool) {
    for _ in 0..runs() {
        let Some(row) = disturb(test, what, callee_side) else {
            return;
        };
        let best = if what == Disturbance::RelayCrash {
            "relay-udp"
        } else {
            "direct"
        };
        // After a new address, a device's new address, or a NAT restart whose state the
        // peer's packets reached first, a NAT holds a stale entry that pushes the peer's
        // mapping onto another port until the kernel reaps it (30 s after the last packet,
        // plus up to a minute for its garbage collector; a call waited it out on the relay
        // for 135-140 s). Both sides now move the call's direct paths to fresh ports, flows
        // no stale entry clashes with: the call is back on its best path within seconds (the
        // bound here is loose: a timing, not a benchmark; the closing table has the figures).
        assert_eq!(row.path_after, best, "{row:?}");
        if what != Disturbance::SignallingCrash {
            assert!(
                row.back_ms.is_some_and(|b| b <= 10_000.0),
                "not back on {best} within 10 s: {row:?}"
            );
        }
        for gap in [row.caller_gap_ms, row.callee_gap_ms] {
            assert!(gap <= 1500.0, "audio gap {gap} ms: {row:?}");
        }
    }
}

#[test]
fn a_call_survives_the_callers_nat_restarting() {
    case(
        "a_call_survives_the_callers_nat_restarting",
        Disturbance::NatRestart,
        false,
    );
}

#[test]
fn a_call_survives_the_callees_nat_restarting() {
    case(
        "a_call_survives_the_callees_nat_restarting",
        Disturbance::NatRestart,
        true,
    );
}

#[test]
fn a_call_survives_the_callers_nat_moving_to_a_new_address() {
    case(
        "a_call_survives_the_callers_nat_moving_to_a_new_address",
        Disturbance::NewAddress,
        false,
    );
}

#[test]
fn a_call_survives_the_callees_nat_moving_to_a_new_address() {
    case(
        "a_call_survives_the_callees_nat_moving_to_a_new_address",
        Disturbance::NewAddress,
        true,
    );
}

#[test]
fn a_call_survives_a_super_node_of_the_callee_crashing() {
    case(
        "a_call_survives_a_super_node_of_the_callee_crashing",
        Disturbance::SignallingCrash,
        true,
    );
}

#[test]
fn a_call_survives_the_callers_device_changing_address() {
    case(
        "a_call_survives_the_callers_device_changing_address",
        Disturbance::DeviceMove,
        false,
    );
}

#[test]
fn a_call_survives_the_callees_device_changing_address() {
    case(
        "a_call_survives_the_callees_device_changing_address",
        Disturbance::DeviceMove,
        true,
    );
}

#[test]
fn a_call_survives_its_relaying_super_node_crashing() {
    case(
        "a_call_survives_its_relaying_super_node_crashing",
        Disturbance::RelayCrash,
        false,
    );
}
