//! Login server under load: 200 concurrent clients logging in over TLS 1.3 with real Argon2id
//! (OWASP minimum: 19 MiB, t=2, p=1), while a probe measures the latency of a cheap request
//! (version check) on fresh connections. The same probe first runs against the idle server, as
//! the reference, so the report is a ratio.
//!
//! `cargo bench -p natter-benches --bench login_load` (set NATTER_LOAD_SECS to change the
//! 10-second load phase, NATTER_LOAD_CLIENTS for the 200 clients).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use natter_core::crypto::DeviceIdentity;
use natter_core::login::client::{LoginClientEvent, Operation};
use natter_core::login::proto::Version;
use natter_core::rng::Rng;
use natter_server::runtime::{LoginServerHandle, LoginServerOptions};
use natter_transport::login::client::run_operations;
use natter_transport::login::network::NetworkFile;

const V: Version = Version::new(0, 1, 0);
const T: Duration = Duration::from_secs(60);
const PASSWORD: &str = "load test passphrase";

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Version checks on fresh connections (TCP + TLS handshake + Hello), one every `gap`.
fn probe(
    net: &NetworkFile,
    device: &DeviceIdentity,
    until: impl Fn() -> bool,
    gap: Duration,
) -> Vec<Duration> {
    let mut out = Vec::new();
    while !until() {
        let t = Instant::now();
        if run_operations(net, device, V, false, vec![], T).is_ok() {
            out.push(t.elapsed());
        }
        std::thread::sleep(gap);
    }
    out.sort();
    out
}

fn main() {
    let clients = env("NATTER_LOAD_CLIENTS", 200) as usize;
    let secs = env("NATTER_LOAD_SECS", 10);
    let dir = tempfile::tempdir().expect("temp dir");
    let opts = LoginServerOptions::new(dir.path(), "127.0.0.1:0".parse().unwrap());
    let workers = opts.workers;
    let server = LoginServerHandle::start(opts).expect("login server starts");
    let net = server.network().clone();
    let mut rng = Rng::from_seed(1);
    let devices: Vec<DeviceIdentity> = (0..clients)
        .map(|_| DeviceIdentity::generate(&mut rng))
        .collect();
    let probe_device = DeviceIdentity::generate(&mut rng);

    eprintln!("registering {clients} users ({workers} hashing workers)...");
    let reg_start = Instant::now();
    std::thread::scope(|s| {
        for chunk in devices.chunks(clients.div_ceil(16)).enumerate() {
            let net = &net;
            s.spawn(move || {
                let (c, devs) = chunk;
                for (i, d) in devs.iter().enumerate() {
                    let user = format!("load{}", c * clients.div_ceil(16) + i);
                    let ev = run_operations(
                        net,
                        d,
                        V,
                        true,
                        vec![Operation::Register {
                            user,
                            password: PASSWORD.into(),
                        }],
                        T,
                    )
                    .unwrap();
                    assert!(ev.contains(&LoginClientEvent::Registered), "{ev:?}");
                }
            });
        }
    });
    let reg_time = reg_start.elapsed();

    // Reference: the cheap request against the idle server.
    let n = Arc::new(Mutex::new(0));
    let idle = {
        let n = n.clone();
        probe(
            &net,
            &probe_device,
            move || {
                let mut g = n.lock().unwrap();
                *g += 1;
                *g > 200
            },
            Duration::from_millis(2),
        )
    };

    // Load: every client logs in again and again; the probe runs alongside.
    let stop = Arc::new(AtomicBool::new(false));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let failures = Arc::new(Mutex::new(0u64));
    let start = Instant::now();
    let loaded = std::thread::scope(|s| {
        for (i, d) in devices.iter().enumerate() {
            let (net, stop, latencies, failures) =
                (&net, stop.clone(), latencies.clone(), failures.clone());
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let op = Operation::Login {
                        user: format!("load{i}"),
                        password: PASSWORD.into(),
                    };
                    match run_operations(net, d, V, false, vec![op], T) {
                        Ok(ev)
                            if ev
                                .iter()
                                .any(|e| matches!(e, LoginClientEvent::Certified(_))) =>
                        {
                            if !stop.load(Ordering::Relaxed) {
                                latencies.lock().unwrap().push(t.elapsed());
                            }
                        }
                        _ => *failures.lock().unwrap() += 1,
                    }
                }
            });
        }
        let probe_handle = {
            let (net, stop) = (&net, stop.clone());
            let dev = &probe_device;
            s.spawn(move || {
                probe(
                    net,
                    dev,
                    move || stop.load(Ordering::Relaxed),
                    Duration::from_millis(20),
                )
            })
        };
        std::thread::sleep(Duration::from_secs(secs));
        stop.store(true, Ordering::Relaxed);
        probe_handle.join().unwrap()
    });
    let elapsed = start.elapsed().min(Duration::from_secs(secs));
    let mut lat = latencies.lock().unwrap().clone();
    lat.sort();
    let logins_per_sec = lat.len() as f64 / elapsed.as_secs_f64();
    let idle_p99 = percentile(&idle, 0.99);
    let loaded_p99 = percentile(&loaded, 0.99);
    println!("Login server load ({clients} concurrent clients, {secs} s, Argon2id m=19 MiB t=2 p=1, {workers} workers, 2-core machine shared with the clients)");
    println!(
        "  registrations:               {clients} in {:.1} s ({:.1}/s)",
        reg_time.as_secs_f64(),
        clients as f64 / reg_time.as_secs_f64()
    );
    println!(
        "  logins:                      {} ({logins_per_sec:.1}/s), {} failed",
        lat.len(),
        failures.lock().unwrap()
    );
    println!(
        "  login latency p50 / p99:     {:.0} ms / {:.0} ms",
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99))
    );
    println!(
        "  version check idle p50/p99:  {:.2} ms / {:.2} ms ({} samples)",
        ms(percentile(&idle, 0.5)),
        ms(idle_p99),
        idle.len()
    );
    println!(
        "  version check loaded p50/p99:{:.2} ms / {:.2} ms ({} samples)",
        ms(percentile(&loaded, 0.5)),
        ms(loaded_p99),
        loaded.len()
    );
    println!(
        "  loaded / idle p99 ratio:     {:.1}x",
        loaded_p99.as_secs_f64() / idle_p99.as_secs_f64().max(1e-9)
    );
    println!(
        "{{\"clients\":{clients},\"seconds\":{secs},\"logins_per_sec\":{logins_per_sec:.2},\"login_p50_ms\":{:.1},\"login_p99_ms\":{:.1},\"version_idle_p99_ms\":{:.2},\"version_loaded_p50_ms\":{:.2},\"version_loaded_p99_ms\":{:.2}}}",
        ms(percentile(&lat, 0.5)), ms(percentile(&lat, 0.99)), ms(idle_p99), ms(percentile(&loaded, 0.5)), ms(loaded_p99)
    );
    server.shutdown();
}
