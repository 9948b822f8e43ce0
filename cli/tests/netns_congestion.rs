//! A call through a link narrower than the call, with real `natter` processes in network
//! namespaces (see `netns/mod.rs`): `tc tbf` on the way from the caller to the callee limits
//! it to 24 kbit/s, then 64, then 16 (the clean call needs about 45). A benchmark, not part
//! of `make test` (it takes a minute and measures): `benches/congestion.sh --netns` runs it
//! and plots what it writes. Needs root, iproute2, nftables and tc.

#![cfg(target_os = "linux")]

mod netns;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use netns::natter::{self, servers_with, WAIT};
use netns::{net_or_skip, Nat};

/// (from second, kbit/s) of the bottleneck.
const SCHEDULE: [(u64, u64); 3] = [(0, 24), (20, 64), (40, 16)];
const SECONDS: u64 = 60;

/// The number after `key` in `line` (`"bitrate 12.3 kbit/s"` with key `"bitrate "`).
fn number_after(line: &str, key: &str) -> Option<f64> {
    let rest = &line[line.find(key)? + key.len()..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// `tc -s qdisc show`'s "Sent B bytes P pkt (dropped D": (B, P, D).
fn tbf_counters(text: &str) -> Option<(u64, u64, u64)> {
    let sent = number_after(text, "Sent ")? as u64;
    let pkts = number_after(text, "bytes ")? as u64;
    let dropped = number_after(text, "dropped ")? as u64;
    Some((sent, pkts, dropped))
}

/// `media/testdata/speech.wav` (16 kHz mono) repeated to last `secs`, written to `path`: the
/// caller says something for the whole run (a tone costs Opus more than speech at the
/// lowest bitrates).
fn long_speech(path: &std::path::Path, secs: u32) {
    use natter_media::audio::wav::{read_wav, write_wav};
    let (rate, speech) = read_wav(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../media/testdata/speech.wav"
    ))
    .unwrap();
    let samples: Vec<i16> = speech
        .iter()
        .copied()
        .cycle()
        .take((secs * rate) as usize)
        .collect();
    write_wav(path, rate, &samples).unwrap();
}

#[test]
#[ignore = "a benchmark: benches/congestion.sh --netns"]
fn a_call_follows_a_tbf_bottleneck() {
    let test = "a_call_follows_a_tbf_bottleneck";
    let Some(mut net) = net_or_skip(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let servers = servers_with(&mut net, d, 1, true).unwrap();
    let network = servers.network.clone();
    let a = net.nat_site("a", Nat::PortRestricted, false).unwrap();
    let b = net.nat_site("b", Nat::PortRestricted, false).unwrap();
    let mut callee = natter::start(
        &mut net,
        d,
        &network,
        &b.host,
        "client",
        "callee",
        b.private,
        &["--auto-answer"],
    )
    .unwrap();
    callee.wait_for(&["attached to super node"], WAIT).unwrap();
    let hangup = (SECONDS + 15).to_string();
    let speech = d.join("speech.wav");
    long_speech(&speech, SECONDS as u32 + 30);
    let mut caller = natter::start(
        &mut net,
        d,
        &network,
        &a.host,
        "client",
        "caller",
        a.private,
        &[
            "--call",
            "callee",
            "--hangup-after",
            &hangup,
            "--exit-after-call",
            "--timeout",
            "30",
            "--audio-in",
            speech.to_str().unwrap(),
        ],
    )
    .unwrap();
    caller.wait_for(&["call path direct ("], WAIT).unwrap();
    std::thread::sleep(Duration::from_secs(4));

    // The hop in front of the callee's NAT router: its interface towards the router carries
    // everything to the callee.
    let o = b.public.octets();
    let towards = format!("{}.{}.{}.1/", o[0], o[1], o[2]);
    let shown = net
        .exec(&b.hop, &["ip", "-o", "-4", "addr", "show"])
        .unwrap();
    let dev = shown
        .lines()
        .find(|l| l.contains(&towards))
        .and_then(|l| l.split_whitespace().nth(1))
        .expect("the hop's interface towards the callee's router")
        .to_string();
    let set_rate = |kbps: u64| {
        let rate = format!("{kbps}kbit");
        net.exec(
            &b.hop,
            &[
                "tc", "qdisc", "replace", "dev", &dev, "root", "tbf", "rate", &rate, "burst",
                "1600", "latency", "100ms",
            ],
        )
        .unwrap();
    };

    let out = std::env::var("NATTER_CONGESTION_OUT")
        .unwrap_or_else(|_| "../target/congestion/netns.csv".into());
    let mut csv = String::from(
        "t,link_kbps,offered_kbps,delivered_kbps,dropped_pkts,received_kbps,loss_after_pct,caller_path,caller_loss_out_pct\n",
    );
    let start = Instant::now();
    let mut last = (0u64, 0u64, 0u64);
    let mut concealed_before = 0.0;
    let mut rate = 0;
    for t in 0..SECONDS {
        if let Some(&(_, kbps)) = SCHEDULE.iter().find(|(from, _)| *from == t) {
            set_rate(kbps);
            rate = kbps;
        }
        let due = start + Duration::from_secs(t + 1);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        callee.mark();
        caller.mark();
        let text = net
            .exec(&b.hop, &["tc", "-s", "qdisc", "show", "dev", &dev])
            .unwrap();
        let (sent, pkts, dropped) = tbf_counters(&text).unwrap_or(last);
        if sent < last.0 {
            // A replaced qdisc may start its counters again.
            last = (0, 0, 0);
        }
        let (ds, dp, dd) = (
            sent.saturating_sub(last.0),
            pkts.saturating_sub(last.1),
            dropped.saturating_sub(last.2),
        );
        last = (sent, pkts, dropped);
        let mean = if dp > 0 { ds as f64 / dp as f64 } else { 0.0 };
        let offered = (ds as f64 + dd as f64 * mean) * 8.0 / 1000.0;
        let audio = callee.last_line("call audio: jitter buffer").unwrap_or("");
        let received = number_after(audio, "bitrate ").unwrap_or(0.0);
        // The concealed time is the call's so far: a second's growth of it, in ms, is the
        // share of that second lost after recovery, in tenths of a percent.
        let concealed = number_after(audio, "concealed ").unwrap_or(concealed_before);
        let after = ((concealed - concealed_before) / 10.0).max(0.0);
        concealed_before = concealed;
        // The caller's path and the loss of its media the callee reported, as it prints them.
        let stats = caller.last_line("call stats: path").unwrap_or("");
        let path = stats.split_whitespace().nth(3).unwrap_or("-").to_string();
        let loss_out = number_after(stats, "out ").unwrap_or(0.0);
        writeln!(
            csv,
            "{t},{rate},{offered:.1},{:.1},{dd},{received:.1},{after:.2},{path},{loss_out:.1}",
            ds as f64 * 8.0 / 1000.0
        )
        .unwrap();
    }
    if let Some(parent) = std::path::Path::new(&out).parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&out, &csv).unwrap();
    eprintln!("{csv}");
    // The caller's path changes and why (for reading the run).
    for line in caller.seen.iter().filter(|l| l.contains("call path")) {
        eprintln!("caller: {line}");
    }
    eprintln!("written to {out}");
    caller
        .wait_for(&["call ended"], Duration::from_secs(30))
        .ok();
}
