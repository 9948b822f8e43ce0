//! A running node's status for operators: the JSON file `natter node` rewrites every few
//! seconds, its one-line summary (logged every minute) and `natter status`, which reads it.
//!
//! A file rather than a socket or an HTTP endpoint: nothing more listens on the host (no port
//! to firewall or authenticate), reading it needs only file permissions, and any monitoring
//! system can read JSON; it is replaced by an atomic rename, so a reader never sees half of
//! one. A node that died leaves a stale file: `updated` says when it was written, and `natter
//! status` fails when it is older than `--max-age`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use natter::{Client, Role};
use serde::{Deserialize, Serialize};

/// How often `natter node` rewrites its status file.
pub const WRITE_EVERY: Duration = Duration::from_secs(5);

/// How often `natter node` logs the summary line.
pub const LOG_EVERY: Duration = Duration::from_secs(60);

/// The file name in the node's data directory when `--status-file` does not say.
pub const DEFAULT_NAME: &str = "status.json";

/// A node's status, as written to its status file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    /// `natter` version of the node.
    pub version: String,
    /// Process id.
    pub pid: u32,
    /// False once the node stopped cleanly (its last write).
    pub running: bool,
    /// When this was written (Unix time, seconds).
    pub updated: u64,
    /// Seconds since the node started.
    pub uptime_secs: u64,
    /// The account the node logs in as.
    pub user: String,
    /// The address it listens on (UDP and TCP).
    pub listen: SocketAddr,
    /// The role policy: `auto`, `force` (`--supernode`) or `forbid` (`--no-supernode`).
    pub role_policy: String,
    /// True while the node is a super node.
    pub super_node: bool,
    /// Super nodes this node is attached to (as an ordinary node).
    pub attached_to: Vec<SocketAddr>,
    /// Clients attached to this super node.
    pub clients: usize,
    /// Super nodes in this super node's membership view (its index ring).
    pub super_nodes_known: usize,
    /// The last NAT classification, if any.
    pub nat: Option<String>,
    /// This node's address as a super node saw it in the last NAT probe.
    pub mapped_address: Option<SocketAddr>,
    /// The global index's share held here (super nodes).
    pub index: Option<IndexStatus>,
    /// The relay service (super nodes).
    pub relay: Option<RelayStatus>,
    /// Chat mailboxes: messages kept for offline devices (super nodes).
    #[serde(default)]
    pub mailbox: Option<MailboxStatus>,
    /// Share of a core the node's event loop is busy (0 to 1).
    pub cpu: f32,
    /// Bytes per second sent and received.
    pub bytes_per_sec: u64,
}

/// The index part of [`Status`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IndexStatus {
    /// Presence records held.
    pub records: usize,
    /// Records stored since start (new or fresher).
    pub stored: u64,
    /// Records refused since start (invalid, stale or not this node's to hold).
    pub refused: u64,
    /// Searches in progress.
    pub searches: usize,
}

/// The relay part of [`Status`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RelayStatus {
    /// Open relay channels (relayed calls, one channel per call leg pair).
    pub channels: usize,
    /// Channels allocated since start.
    pub allocated: u64,
    /// Allocations refused since start (quota, full, unknown peer...).
    pub refused: u64,
    /// Packets relayed since start.
    pub relayed_packets: u64,
    /// Bytes relayed since start.
    pub relayed_bytes: u64,
    /// Frames dropped since start (malformed, unknown channel, not a party, over the rate).
    pub dropped: u64,
}

/// The mailbox part of [`Status`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MailboxStatus {
    /// Sealed messages kept now for offline devices.
    pub messages: usize,
    /// Their bytes.
    pub bytes: usize,
    /// Messages taken since start.
    pub stored: u64,
    /// Messages refused since start (a bound reached).
    pub refused: u64,
}

/// What the status needs besides the node itself.
pub struct Context {
    /// The account.
    pub user: String,
    /// The listen address.
    pub listen: SocketAddr,
    /// The role policy.
    pub role: Role,
}

impl Status {
    /// Read a running node's status (`None` when it is not running).
    pub fn gather(client: &Client, cx: &Context) -> Option<Status> {
        let n = client.status()?;
        Some(Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            running: true,
            updated: natter_transport::wall_clock().0,
            uptime_secs: n.uptime.as_secs(),
            user: cx.user.clone(),
            listen: cx.listen,
            role_policy: match cx.role {
                Role::SuperNode => "force",
                Role::Client => "forbid",
                _ => "auto",
            }
            .into(),
            super_node: n.super_node,
            attached_to: n.attached_to,
            clients: n.clients,
            super_nodes_known: n.super_nodes_known,
            nat: n.nat.map(|t| t.describe().to_string()),
            mapped_address: n.mapped_address,
            index: n.index.map(|i| IndexStatus {
                records: i.records,
                stored: i.stored,
                refused: i.refused,
                searches: i.searches,
            }),
            relay: n.relay.map(|r| RelayStatus {
                channels: r.channels,
                allocated: r.allocated,
                refused: r.refused,
                relayed_packets: r.relayed_packets,
                relayed_bytes: r.relayed_bytes,
                dropped: r.dropped,
            }),
            mailbox: n.mailbox.map(|m| MailboxStatus {
                messages: m.messages,
                bytes: m.bytes,
                stored: m.stored,
                refused: m.refused,
            }),
            cpu: n.cpu,
            bytes_per_sec: n.bytes_per_sec,
        })
    }

    /// One line: the role and what it serves, the NAT and the uptime.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if self.super_node {
            parts.push(format!(
                "super node: {} clients, {} super nodes known",
                self.clients, self.super_nodes_known
            ));
            if let Some(i) = &self.index {
                parts.push(format!("index {} records", i.records));
            }
            if let Some(r) = &self.relay {
                parts.push(format!(
                    "relay {} channels, {} packets / {} relayed",
                    r.channels,
                    r.relayed_packets,
                    bytes(r.relayed_bytes)
                ));
            }
        } else if self.attached_to.is_empty() {
            parts.push("ordinary node, not attached".into());
        } else {
            let to: Vec<String> = self.attached_to.iter().map(|a| a.to_string()).collect();
            parts.push(format!("ordinary node attached to {}", to.join(", ")));
        }
        parts.push(format!(
            "NAT {}",
            self.nat.as_deref().unwrap_or("not probed yet")
        ));
        parts.push(format!(
            "CPU {:.0} %, {}/s",
            self.cpu * 100.0,
            bytes(self.bytes_per_sec)
        ));
        parts.push(format!("up {}", duration(self.uptime_secs)));
        parts.join("; ")
    }

    /// Several lines, as `natter status` prints them.
    pub fn report(&self, age_secs: u64) -> String {
        let mut out = vec![format!(
            "natter node {} (pid {}), user {}, listening on {}: {}, up {}",
            self.version,
            self.pid,
            self.user,
            self.listen,
            if self.running {
                format!("running (status written {age_secs} s ago)")
            } else {
                format!("stopped {} ago", duration(age_secs))
            },
            duration(self.uptime_secs)
        )];
        out.push(format!(
            "role: {} (policy {})",
            if self.super_node {
                "super node"
            } else {
                "ordinary node"
            },
            self.role_policy
        ));
        if !self.super_node {
            let to: Vec<String> = self.attached_to.iter().map(|a| a.to_string()).collect();
            out.push(format!(
                "attached to: {}",
                if to.is_empty() {
                    "no super node".into()
                } else {
                    to.join(", ")
                }
            ));
        }
        if self.super_node {
            out.push(format!("clients: {}", self.clients));
            out.push(format!("super nodes known: {}", self.super_nodes_known));
        }
        if let Some(i) = &self.index {
            out.push(format!(
                "index: {} records ({} stored, {} refused since start; {} searches in progress)",
                i.records, i.stored, i.refused, i.searches
            ));
        }
        if let Some(r) = &self.relay {
            out.push(format!(
                "relay: {} channels; {} packets, {} relayed; {} allocated, {} refused, {} frames \
                 dropped since start",
                r.channels,
                r.relayed_packets,
                bytes(r.relayed_bytes),
                r.allocated,
                r.refused,
                r.dropped
            ));
        }
        if let Some(m) = &self.mailbox {
            out.push(format!(
                "mailbox: {} messages ({}) kept for offline devices; {} stored, {} refused since \
                 start",
                m.messages,
                bytes(m.bytes as u64),
                m.stored,
                m.refused
            ));
        }
        out.push(format!(
            "NAT: {}{}",
            self.nat.as_deref().unwrap_or("not probed yet"),
            self.mapped_address
                .map(|m| format!(", mapped address {m}"))
                .unwrap_or_default()
        ));
        out.push(format!(
            "load: CPU {:.0} %, {}/s",
            self.cpu * 100.0,
            bytes(self.bytes_per_sec)
        ));
        out.join("\n")
    }

    /// Replace the file at `path` with this status, atomically (a new file renamed over it),
    /// readable by everyone who can reach its directory.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        serde_json::to_writer_pretty(&mut tmp, self)?;
        std::io::Write::write_all(&mut tmp, b"\n")?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            tmp.as_file()
                .set_permissions(std::fs::Permissions::from_mode(0o644))?;
        }
        tmp.persist(path).map_err(|e| e.error)?;
        Ok(())
    }

    /// Read a status file.
    pub fn read(path: &Path) -> Result<Status, String> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                format!(
                    "no status file at {}: is the node running (with this --data or \
                     --status-file)?",
                    path.display()
                )
            } else {
                format!("cannot read {}: {e}", path.display())
            }
        })?;
        serde_json::from_str(&text)
            .map_err(|e| format!("{}: not a status file: {e}", path.display()))
    }
}

/// `12.3 MB` style.
fn bytes(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.1} GB", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.1} MB", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1} kB", n / 1e3)
    } else {
        format!("{n} B")
    }
}

/// `3d 4h`, `2h 5m`, `4m 10s`, `12s`.
fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {s}s")
    } else {
        format!("{s}s")
    }
}

/// Options of `natter status`.
#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// The node's data directory (its status file is `DIR/status.json`).
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "status_file",
        conflicts_with = "status_file"
    )]
    pub data: Option<PathBuf>,
    /// The node's status file, when it was started with `--status-file`.
    #[arg(long, value_name = "PATH")]
    pub status_file: Option<PathBuf>,
    /// Print the status file's JSON instead of a report.
    #[arg(long)]
    pub json: bool,
    /// Fail (exit 1) when the status is older than this many seconds: the node is not running
    /// or is stuck. The node rewrites it every 5 seconds.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub max_age: u64,
}

/// `natter status`: print a node's status; exit 0 when it is running and the status fresh,
/// 1 otherwise.
pub fn status_cmd(args: StatusArgs) -> i32 {
    let path = match (&args.status_file, &args.data) {
        (Some(p), _) => p.clone(),
        (None, Some(d)) => d.join(DEFAULT_NAME),
        (None, None) => unreachable!("clap requires one"),
    };
    let s = match Status::read(&path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("natter status: {e}");
            return 1;
        }
    };
    let age = natter_transport::wall_clock().0.saturating_sub(s.updated);
    if args.json {
        match serde_json::to_string_pretty(&s) {
            Ok(j) => say!("{j}"),
            Err(e) => {
                eprintln!("natter status: {e}");
                return 1;
            }
        }
    } else {
        say!("{}", s.report(age));
    }
    if !s.running {
        eprintln!("natter status: the node stopped");
        return 1;
    }
    if age > args.max_age {
        eprintln!(
            "natter status: the status is {age} s old (more than {} s): the node is not running \
             or is stuck",
            args.max_age
        );
        return 1;
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Status {
        Status {
            version: "0.1.0".into(),
            pid: 42,
            running: true,
            updated: 1_700_000_000,
            uptime_secs: 3725,
            user: "sn1".into(),
            listen: "0.0.0.0:4000".parse().unwrap(),
            role_policy: "force".into(),
            super_node: true,
            attached_to: vec![],
            clients: 3,
            super_nodes_known: 7,
            nat: Some("open (public address, no filtering)".into()),
            mapped_address: Some("203.0.113.5:4000".parse().unwrap()),
            index: Some(IndexStatus {
                records: 12,
                stored: 20,
                refused: 1,
                searches: 0,
            }),
            relay: Some(RelayStatus {
                channels: 1,
                allocated: 2,
                refused: 0,
                relayed_packets: 1500,
                relayed_bytes: 2_400_000,
                dropped: 0,
            }),
            mailbox: Some(MailboxStatus {
                messages: 3,
                bytes: 1800,
                stored: 5,
                refused: 0,
            }),
            cpu: 0.02,
            bytes_per_sec: 1234,
        }
    }

    #[test]
    fn the_status_file_round_trips_and_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        let s = sample();
        s.write(&path).unwrap();
        s.write(&path).unwrap();
        assert_eq!(Status::read(&path).unwrap(), s);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        assert_eq!(
            s.summary(),
            "super node: 3 clients, 7 super nodes known; index 12 records; relay 1 channels, \
             1500 packets / 2.4 MB relayed; NAT open (public address, no filtering); CPU 2 %, \
             1.2 kB/s; up 1h 2m"
        );
        let report = s.report(3);
        assert!(
            report.contains("running (status written 3 s ago)"),
            "{report}"
        );
        assert!(report.contains("clients: 3"), "{report}");
        let missing = Status::read(&dir.path().join("nope.json")).unwrap_err();
        assert!(missing.contains("is the node running"), "{missing}");
    }
}
