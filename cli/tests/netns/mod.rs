//! A harness for real NAT tests: hosts, NAT routers and firewalls as Linux network namespaces
//! joined by veth links, with real NAT (nftables masquerade) and real `natter` processes in
//! them. Linux only, needs root, `ip` (iproute2) and `nft` (nftables).
//!
//! Topology ([`Net`]): a **core** namespace routes between sites and stands for the Internet.
//! Public hosts hang directly off it, each on a /24 of its own in `198.18.K.0/24` (the core is
//! `.1`, the host `.10`, `.11`, ...). A NAT **site** ([`Net::nat_site`]) is three namespaces:
//! a router hop (`198.18.K.0/24` to the core), the NAT router (`198.18.M.0/24` to the hop; its
//! outside address is `198.18.M.2`) and a host on a private LAN `198.19.J.0/24` (the NAT is
//! `.1`, the host `.2`; [`Net::add_host`] puts more hosts on the same LAN, `.3`, `.4`, ..., all
//! on a bridge in the NAT router, so they reach one another directly, like on a home switch).
//! The core knows no route to `198.19.0.0/16`, so nothing from a private LAN gets anywhere
//! without the NAT. Every address is in `198.18.0.0/15` (RFC 2544 benchmarking space), so
//! nothing leaks to or from a real network.
//!
//! The hop matters: a packet sent with IP TTL 2 from a site's host crosses its own NAT (which
//! creates the mapping) and dies at the hop, before it can reach, and spoil, the other side's
//! NAT. That is the low-TTL opener of hole punching. Measured: TTL 2, 3 (dies in the core) and
//! 4 (at the far hop) open the way both ways; TTL 1 dies in the NAT router before conntrack
//! keeps a mapping, and 5 reaches the far NAT router and spoils it, like a normal packet.
//!
//! [`Net::block_udp`] cuts UDP between two public addresses in the core (e.g. two NATs' outside
//! addresses, [`Net::block_udp_between`]) and [`Net::unblock_udp`] restores it, mid-test: the
//! direct path of a call breaks while the paths to super nodes keep working.
//! [`Net::udp_probe`] and [`Net::ping`] check what reaches what. [`Net::endpoint`] makes one
//! side of a call at a [`Place`] (public, behind a NAT, behind a NAT and a UDP-dropping
//! firewall), so a test can run the same call over every topology. [`natter`] starts real
//! `natter` processes in them (a login server and a super node, nodes and clients);
//! [`Proc`] follows their output, with the time each line arrived.
//!
//! NAT behaviours: [`Nat::PortRestricted`] is plain `masquerade` (conntrack keeps the source
//! port when it can and lets in only replies from the exact address and port a packet went to:
//! endpoint-independent mapping, address-and-port-dependent filtering); [`Nat::Symmetric`] is
//! `masquerade random` (a fresh random port for every new flow, i.e. every new destination).
//! A site may also drop all UDP between its LAN and the outside (a firewall that lets only TCP
//! through). Measured on this kernel: a packet that reaches a NAT router's outside address
//! before its host sent anything to that source leaves a conntrack entry (30 s, refreshed by
//! every further such packet) that pushes the host's own mapping towards that source onto
//! another port, so naive simultaneous punching between two port-restricted NATs fails unless
//! both first packets cross their own NATs before either reaches the other.
//!
//! Names are `ntrPIDxN-NAME` (process id and a per-process counter), so tests running at the
//! same time never collide. [`Net`]'s `Drop` kills the processes it started (and any other
//! process left in its namespaces) and deletes the namespaces, which removes their links, also
//! when a test panics; [`Net::new`] first deletes namespaces left by runs whose process no
//! longer exists (a run killed with SIGKILL cannot clean up after itself).

#![allow(dead_code)]

pub mod natter;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Prefix of every namespace this harness makes.
const PREFIX: &str = "ntr";

/// The bridge that is a NAT site's LAN, in its NAT router's namespace.
const LAN_BRIDGE: &str = "lan0";

/// The core's nftables table that drops UDP between blocked pairs of addresses.
const BLOCK_TABLE: &str = "natter_block";

/// The nftables table in which [`Net::udp_probe`] notes the datagrams it watches for.
const PROBE_TABLE: &str = "natter_probe";

/// The UDP ports [`Net::udp_probe`] sends to, one per probe.
pub const PROBE_PORTS: std::ops::Range<u16> = 20000..30000;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Run `program args` on the host; its standard output, or an error with its standard error.
pub fn run(program: &str, args: &[&str]) -> Result<String, String> {
    run_stdin(program, args, None)
}

fn run_stdin(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{program} {args:?}: {e}"))?;
    if let Some(text) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .map_err(|e| format!("{program} {args:?}: writing stdin: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{program} {args:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {args:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether the test must fail (rather than skip) when namespaces cannot be made.
pub fn required() -> bool {
    std::env::var_os("NATTER_REQUIRE_NETNS").is_some()
}

/// A [`Net`], or `None` after saying clearly why the test is skipped; a failure under
/// `NATTER_REQUIRE_NETNS` (as `make test` sets).
pub fn net_or_skip(test: &str) -> Option<Net> {
    match Net::new() {
        Ok(net) => Some(net),
        Err(e) if !required() => {
            eprintln!(
                "SKIPPED {test}: network-namespace tests need root, iproute2 and nftables \
                 (set NATTER_REQUIRE_NETNS=1 to make this a failure): {e}"
            );
            None
        }
        Err(e) => panic!("NATTER_REQUIRE_NETNS is set but network namespaces are unusable: {e}"),
    }
}

/// Delete the namespaces of earlier runs whose process is gone.
fn clean_stale() {
    let Ok(list) = run("ip", &["netns", "list"]) else {
        return;
    };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('x').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            kill_all_in(name);
            let _ = run("ip", &["netns", "del", name]);
        }
    }
}

/// SIGKILL every process in namespace `ns`.
fn kill_all_in(ns: &str) {
    if let Ok(pids) = run("ip", &["netns", "pids", ns]) {
        for pid in pids.split_whitespace() {
            let _ = run("kill", &["-KILL", pid]);
        }
    }
}

/// NAT behaviour of a site's router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nat {
    /// `masquerade`: endpoint-independent mapping, address-and-port-dependent filtering.
    PortRestricted,
    /// `masquerade random`: a new random port for every flow (address-and-port-dependent
    /// mapping).
    Symmetric,
}

/// A host behind a NAT router.
#[derive(Debug, Clone)]
pub struct Site {
    /// The host's namespace.
    pub host: String,
    /// The host's private address.
    pub private: Ipv4Addr,
    /// The NAT router's namespace.
    pub router: String,
    /// The NAT router's outside (public) address.
    pub public: Ipv4Addr,
    /// The router hop's namespace (between the NAT router and the core).
    pub hop: String,
    /// The NAT router's behaviour.
    pub nat: Nat,
}

/// Where an [`Endpoint`] sits: what is between it and the Internet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// A public address, directly on the core.
    Public,
    /// Behind a NAT router with this behaviour.
    Behind(Nat),
    /// Behind a NAT router with this behaviour whose firewall drops all UDP to and from the
    /// outside.
    Firewalled(Nat),
}

/// A host for one side of a call, wherever it sits ([`Net::endpoint`]).
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Its namespace.
    pub ns: String,
    /// Its own address (what it listens on): public, or private behind a NAT.
    pub addr: Ipv4Addr,
    /// The address the Internet sees it from: `addr`, or its NAT's outside address.
    pub public: Ipv4Addr,
    /// Its NAT site, unless it is public.
    pub site: Option<Site>,
}

impl From<Site> for Endpoint {
    fn from(site: Site) -> Endpoint {
        Endpoint {
            ns: site.host.clone(),
            addr: site.private,
            public: site.public,
            site: Some(site),
        }
    }
}

/// A set of namespaces and the processes in them, all removed on drop.
pub struct Net {
    prefix: String,
    /// Namespaces in creation order.
    namespaces: Vec<String>,
    /// Interfaces made so far per namespace (to name the next one).
    ifaces: HashMap<String, u32>,
    children: Vec<Child>,
    /// The core (Internet) router's namespace.
    pub core: String,
    /// Next free /24 in 198.18.0.0/16 (public side) and 198.19.0.0/16 (private LANs).
    next_public: u8,
    next_private: u8,
    /// Next free host number on each NAT site's LAN, by NAT router namespace.
    next_on_lan: HashMap<String, u8>,
    /// Probes sent by [`Net::udp_probe`] so far (each goes to a port of its own).
    probes: u16,
    /// Namespaces that have [`Net::udp_probe`]'s table.
    probe_tables: HashSet<String>,
}

impl Net {
    /// A new network with its core router. Fails when namespaces or nftables are unusable
    /// (not root, tools missing).
    pub fn new() -> Result<Net, String> {
        run("ip", &["-V"]).map_err(|e| format!("iproute2 missing: {e}"))?;
        run("nft", &["--version"]).map_err(|e| format!("nftables missing: {e}"))?;
        clean_stale();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let mut net = Net {
            prefix: format!("{PREFIX}{}x{n}-", std::process::id()),
            namespaces: Vec::new(),
            ifaces: HashMap::new(),
            children: Vec::new(),
            core: String::new(),
            next_public: 1,
            next_private: 1,
            next_on_lan: HashMap::new(),
            probes: 0,
            probe_tables: HashSet::new(),
        };
        net.core = net.router("core")?;
        // Also shows that nftables works here (the kernel has nf_tables and we may use it).
        net.nft(
            &net.core.clone(),
            &format!(
                "table inet {BLOCK_TABLE} {{\n  \
                 set udp_pairs {{\n    type ipv4_addr . ipv4_addr;\n  }}\n  \
                 chain forward {{\n    \
                 type filter hook forward priority filter; policy accept;\n    \
                 meta l4proto udp ip saddr . ip daddr @udp_pairs drop\n  }}\n}}\n"
            ),
        )?;
        Ok(net)
    }

    /// The prefix of this network's namespace names.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Names of the namespaces that exist now and start with `prefix`.
    pub fn existing(prefix: &str) -> Vec<String> {
        run("ip", &["netns", "list"])
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(prefix))
            .map(str::to_string)
            .collect()
    }

    /// A new namespace with its loopback up; returns its full name.
    pub fn namespace(&mut self, name: &str) -> Result<String, String> {
        let ns = format!("{}{name}", self.prefix);
        run("ip", &["netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        self.exec(&ns, &["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A namespace that forwards IPv4.
    pub fn router(&mut self, name: &str) -> Result<String, String> {
        let ns = self.namespace(name)?;
        self.exec(&ns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        Ok(ns)
    }

    /// Run a command in namespace `ns`; its standard output.
    pub fn exec(&self, ns: &str, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["netns", "exec", ns];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Load an nftables ruleset into namespace `ns`.
    pub fn nft(&self, ns: &str, ruleset: &str) -> Result<(), String> {
        run_stdin(
            "ip",
            &["netns", "exec", ns, "nft", "-f", "-"],
            Some(ruleset),
        )
        .map(|_| ())
    }

    fn next_iface(&mut self, ns: &str) -> String {
        let n = self.ifaces.entry(ns.to_string()).or_insert(0);
        *n += 1;
        format!("veth{}", *n - 1)
    }

    /// A veth link between namespaces `a` and `b`, up, with addresses (CIDR notation, e.g.
    /// `198.18.1.1/24`; several for one end separated by spaces, none for an empty string);
    /// returns the interface names.
    pub fn link(
        &mut self,
        a: &str,
        a_addrs: &str,
        b: &str,
        b_addrs: &str,
    ) -> Result<(String, String), String> {
        let (ia, ib) = (self.next_iface(a), self.next_iface(b));
        run(
            "ip",
            &[
                "-n", a, "link", "add", &ia, "type", "veth", "peer", "name", &ib, "netns", b,
            ],
        )?;
        for (ns, iface, addrs) in [(a, &ia, a_addrs), (b, &ib, b_addrs)] {
            for addr in addrs.split_whitespace() {
                run("ip", &["-n", ns, "addr", "add", addr, "dev", iface])?;
            }
            run("ip", &["-n", ns, "link", "set", iface, "up"])?;
        }
        Ok((ia, ib))
    }

    /// A route in namespace `ns`: `to` (`default` or a CIDR) via `via`.
    pub fn route(&self, ns: &str, to: &str, via: Ipv4Addr) -> Result<(), String> {
        run(
            "ip",
            &["-n", ns, "route", "add", to, "via", &via.to_string()],
        )
        .map(|_| ())
    }

    fn public_subnet(&mut self) -> u8 {
        let k = self.next_public;
        self.next_public += 1;
        k
    }

    /// A host on the Internet side: directly attached to the core on a /24 of its own, with
    /// `count` addresses (`198.18.K.10`, `.11`, ...).
    pub fn public_host(
        &mut self,
        name: &str,
        count: u8,
    ) -> Result<(String, Vec<Ipv4Addr>), String> {
        let ns = self.namespace(name)?;
        let k = self.public_subnet();
        let addrs: Vec<Ipv4Addr> = (0..count)
            .map(|i| Ipv4Addr::new(198, 18, k, 10 + i))
            .collect();
        let cidrs: Vec<String> = addrs.iter().map(|a| format!("{a}/24")).collect();
        let core = self.core.clone();
        self.link(&core, &format!("198.18.{k}.1/24"), &ns, &cidrs.join(" "))?;
        self.route(&ns, "default", Ipv4Addr::new(198, 18, k, 1))?;
        Ok((ns, addrs))
    }

    /// A host behind a NAT router with behaviour `nat`, one router hop away from the core;
    /// with `drop_udp` the NAT router also drops all UDP between its LAN and the outside.
    pub fn nat_site(&mut self, name: &str, nat: Nat, drop_udp: bool) -> Result<Site, String> {
        let hop = self.router(&format!("{name}-hop"))?;
        let router = self.router(&format!("{name}-nat"))?;
        let host = self.namespace(name)?;
        let core = self.core.clone();
        // Core <-> hop.
        let k = self.public_subnet();
        self.link(
            &core,
            &format!("198.18.{k}.1/24"),
            &hop,
            &format!("198.18.{k}.2/24"),
        )?;
        self.route(&hop, "default", Ipv4Addr::new(198, 18, k, 1))?;
        // Hop <-> NAT router (its outside address).
        let m = self.public_subnet();
        let public = Ipv4Addr::new(198, 18, m, 2);
        let (_, outside) = self.link(
            &hop,
            &format!("198.18.{m}.1/24"),
            &router,
            &format!("{public}/24"),
        )?;
        self.route(&router, "default", Ipv4Addr::new(198, 18, m, 1))?;
        self.route(
            &core,
            &format!("198.18.{m}.0/24"),
            Ipv4Addr::new(198, 18, k, 2),
        )?;
        // The private LAN: a bridge in the NAT router, which is its `.1`. Bridged frames stay
        // out of the router's IP hooks (as on a real switch), whatever br_netfilter says.
        let j = self.next_private;
        self.next_private += 1;
        let bridged = self.exec(
            &router,
            &["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0"],
        );
        if bridged.is_err() && Path::new("/proc/sys/net/bridge").exists() {
            bridged?;
        }
        run(
            "ip",
            &["-n", &router, "link", "add", LAN_BRIDGE, "type", "bridge"],
        )?;
        run(
            "ip",
            &[
                "-n",
                &router,
                "addr",
                "add",
                &format!("198.19.{j}.1/24"),
                "dev",
                LAN_BRIDGE,
            ],
        )?;
        run("ip", &["-n", &router, "link", "set", LAN_BRIDGE, "up"])?;
        self.next_on_lan.insert(router.clone(), 2);
        let private = self.lan_link(&router, j, &host)?;
        let masquerade = match nat {
            Nat::PortRestricted => "masquerade",
            Nat::Symmetric => "masquerade random",
        };
        let mut rules = format!(
            "table ip natter_nat {{\n  chain postrouting {{\n    \
             type nat hook postrouting priority srcnat; policy accept;\n    \
             oifname \"{outside}\" {masquerade}\n  }}\n}}\n"
        );
        if drop_udp {
            rules.push_str(&format!(
                "table inet natter_fw {{\n  chain udpdrop {{\n    \
                 type filter hook forward priority filter; policy accept;\n    \
                 iifname \"{outside}\" meta l4proto udp drop\n    \
                 oifname \"{outside}\" meta l4proto udp drop\n  }}\n}}\n"
            ));
        }
        self.nft(&router, &rules)?;
        Ok(Site {
            host,
            private,
            router,
            public,
            hop,
            nat,
        })
    }

    /// Link namespace `host` to the LAN `198.19.J.0/24` of the NAT router `router` with the
    /// LAN's next free address, and route through the router; returns that address.
    fn lan_link(&mut self, router: &str, j: u8, host: &str) -> Result<Ipv4Addr, String> {
        let next = self
            .next_on_lan
            .get_mut(router)
            .ok_or_else(|| format!("{router} is no NAT router of this net"))?;
        let private = Ipv4Addr::new(198, 19, j, *next);
        *next = next
            .checked_add(1)
            .filter(|n| *n < 255)
            .ok_or("the LAN is full")?;
        let (port, _) = self.link(router, "", host, &format!("{private}/24"))?;
        run(
            "ip",
            &["-n", router, "link", "set", &port, "master", LAN_BRIDGE],
        )?;
        self.route(host, "default", Ipv4Addr::new(198, 19, j, 1))?;
        Ok(private)
    }

    /// Another host on `site`'s private LAN, behind the same NAT (`198.19.J.3`, `.4`, ...):
    /// its namespace and private address. It reaches the site's other hosts directly.
    pub fn add_host(&mut self, site: &Site, name: &str) -> Result<(String, Ipv4Addr), String> {
        let host = self.namespace(name)?;
        let j = site.private.octets()[2];
        let private = self.lan_link(&site.router.clone(), j, &host)?;
        Ok((host, private))
    }

    /// A host for one side of a call at `place`: a public host, or the host of a new NAT site
    /// (whose namespaces are named after `name`).
    pub fn endpoint(&mut self, name: &str, place: Place) -> Result<Endpoint, String> {
        match place {
            Place::Public => {
                let (ns, addrs) = self.public_host(name, 1)?;
                Ok(Endpoint {
                    ns,
                    addr: addrs[0],
                    public: addrs[0],
                    site: None,
                })
            }
            Place::Behind(nat) => Ok(self.nat_site(name, nat, false)?.into()),
            Place::Firewalled(nat) => Ok(self.nat_site(name, nat, true)?.into()),
        }
    }

    /// Drop all UDP between the public addresses `a` and `b` (both ways) in the core, until
    /// [`Net::unblock_udp`]; everything else keeps flowing, also UDP from either to any other
    /// address. Takes effect at once, also on flows already under way.
    pub fn block_udp(&self, a: Ipv4Addr, b: Ipv4Addr) -> Result<(), String> {
        self.udp_pairs("add", a, b)
    }

    /// Let UDP between `a` and `b` through the core again (an error if it was not blocked).
    pub fn unblock_udp(&self, a: Ipv4Addr, b: Ipv4Addr) -> Result<(), String> {
        self.udp_pairs("delete", a, b)
    }

    /// [`Net::block_udp`] between two NAT sites' outside addresses: the direct path between
    /// their hosts breaks, their paths to public hosts do not.
    pub fn block_udp_between(&self, a: &Site, b: &Site) -> Result<(), String> {
        self.block_udp(a.public, b.public)
    }

    /// Undo [`Net::block_udp_between`].
    pub fn unblock_udp_between(&self, a: &Site, b: &Site) -> Result<(), String> {
        self.unblock_udp(a.public, b.public)
    }

    /// `add` or `delete` the pairs `a . b` and `b . a` in the core's set of blocked pairs.
    fn udp_pairs(&self, verb: &str, a: Ipv4Addr, b: Ipv4Addr) -> Result<(), String> {
        let elements = format!("{{ {a} . {b}, {b} . {a} }}");
        self.exec(
            &self.core,
            &[
                "nft",
                verb,
                "element",
                "inet",
                BLOCK_TABLE,
                "udp_pairs",
                &elements,
            ],
        )
        .map(|_| ())
    }

    /// Send a few UDP datagrams from namespace `from` to `to` and watch namespace `at` for
    /// them (as they arrive there, before any NAT): the source addresses they came from, once
    /// some arrived, or none after `within`. Every probe goes to a port of its own (from
    /// [`PROBE_PORTS`], where nothing listens), so probes never see one another's datagrams.
    /// Needs only bash (its `/dev/udp`) and nft. The datagrams leave conntrack state on their
    /// way like any others, but on flows of their own.
    pub fn udp_probe(
        &mut self,
        from: &str,
        at: &str,
        to: Ipv4Addr,
        within: Duration,
    ) -> Result<Vec<Ipv4Addr>, String> {
        let port = PROBE_PORTS.start + self.probes;
        if port >= PROBE_PORTS.end {
            return Err("out of probe ports".into());
        }
        self.probes += 1;
        if !self.probe_tables.contains(at) {
            self.nft(
                at,
                &format!(
                    "table inet {PROBE_TABLE} {{\n  \
                     set seen {{\n    \
                     type ipv4_addr . ipv4_addr . inet_service; flags dynamic;\n  }}\n  \
                     chain pre {{\n    \
                     type filter hook prerouting priority raw; policy accept;\n    \
                     udp dport {}-{} add @seen {{ ip saddr . ip daddr . udp dport }}\n  \
                     }}\n}}\n",
                    PROBE_PORTS.start,
                    PROBE_PORTS.end - 1
                ),
            )?;
            self.probe_tables.insert(at.to_string());
        }
        let send = format!("for i in 1 2 3; do echo probe >/dev/udp/{to}/{port}; done");
        self.exec(from, &["bash", "-c", &send])?;
        let wanted = format!(" . {to} . {port}");
        let deadline = Instant::now() + within;
        loop {
            let listed = self.exec(
                at,
                &["nft", "-n", "list", "set", "inet", PROBE_TABLE, "seen"],
            )?;
            let seen: Vec<Ipv4Addr> = listed
                .split_once("elements")
                .map_or("", |(_, rest)| rest)
                .split([',', '{', '}', '\n'])
                .filter_map(|e| e.trim().strip_suffix(&wanted)?.parse().ok())
                .collect();
            if !seen.is_empty() || Instant::now() >= deadline {
                return Ok(seen);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether `ping` is installed (iputils-ping), for [`Net::ping`].
    pub fn have_ping() -> bool {
        run("ping", &["-V"]).is_ok()
    }

    /// Whether one ICMP echo from namespace `from` to `to` gets its reply within a second.
    pub fn ping(&self, from: &str, to: Ipv4Addr) -> bool {
        self.exec(from, &["ping", "-c1", "-W1", "-q", &to.to_string()])
            .is_ok()
    }

    /// Start `program args` in namespace `ns` with `env`; the [`Net`] kills it on drop.
    pub fn spawn(
        &mut self,
        ns: &str,
        program: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Proc, String> {
        self.spawn_inner(ns, program, args, env, false)
    }

    /// [`Net::spawn`], with a standard input that [`Proc::send`] writes lines to.
    #[allow(dead_code)]
    pub fn spawn_with_input(
        &mut self,
        ns: &str,
        program: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Proc, String> {
        self.spawn_inner(ns, program, args, env, true)
    }

    fn spawn_inner(
        &mut self,
        ns: &str,
        program: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        input: bool,
    ) -> Result<Proc, String> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .arg(program)
            .args(args)
            .stdin(if input { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("{} {args:?} in {ns}: {e}", program.display()))?;
        let (tx, lines) = channel();
        let stdin = child.stdin.take();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            // Keep draining after the receiver is gone: a closed pipe would kill the process
            // at its next line of output.
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send((Instant::now(), line));
            }
        });
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let err = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        self.children.push(child);
        Ok(Proc {
            name: format!("{} in {ns}", program.display()),
            child: self.children.len() - 1,
            lines,
            seen: Vec::new(),
            seen_at: Vec::new(),
            stderr,
            stdin,
        })
    }
}

impl Net {
    /// `p`'s exit code once it exited (within `within`); `None` while it runs (or when a
    /// signal ended it).
    pub fn wait_exit(&mut self, p: &Proc, within: Duration) -> Option<i32> {
        let child = &mut self.children[p.child];
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Net {
    /// Kill `p` at once (SIGKILL, as a crash would).
    pub fn kill(&mut self, p: &Proc) {
        let child = &mut self.children[p.child];
        let _ = child.kill();
        let _ = child.wait();
    }

    /// `site`'s NAT router forwards nothing for `outage`, then comes back without its
    /// connection-tracking state (a home router rebooting). Needs `conntrack`.
    pub fn restart_nat(&self, site: &Site, outage: Duration) -> Result<(), String> {
        self.nft(
            &site.router,
            "table inet natter_outage {\n  chain forward {\n    \
             type filter hook forward priority -10; policy drop;\n  }\n}\n",
        )?;
        std::thread::sleep(outage);
        self.exec(&site.router, &["conntrack", "-F"])?;
        self.exec(
            &site.router,
            &["nft", "delete", "table", "inet", "natter_outage"],
        )?;
        Ok(())
    }

    /// `site`'s NAT router gets a new outside address (`.3` instead of `.2` on its outside
    /// /24, as from a new lease); its mappings go with the old one. Returns the new address.
    pub fn move_nat(&self, site: &mut Site) -> Result<Ipv4Addr, String> {
        let o = site.public.octets();
        let new = Ipv4Addr::new(o[0], o[1], o[2], o[3] + 1);
        let shown = self.exec(&site.router, &["ip", "-o", "-4", "addr", "show"])?;
        let dev = shown
            .lines()
            .find(|l| l.contains(&format!(" {}/", site.public)))
            .and_then(|l| l.split_whitespace().nth(1))
            .ok_or_else(|| format!("no interface with {} in {shown}", site.public))?
            .to_string();
        for (k, v) in [("all", "1"), (dev.as_str(), "1")] {
            self.exec(
                &site.router,
                &[
                    "sysctl",
                    "-qw",
                    &format!("net.ipv4.conf.{k}.promote_secondaries={v}"),
                ],
            )?;
        }
        self.exec(
            &site.router,
            &["ip", "addr", "add", &format!("{new}/24"), "dev", &dev],
        )?;
        self.exec(
            &site.router,
            &[
                "ip",
                "addr",
                "del",
                &format!("{}/24", site.public),
                "dev",
                &dev,
            ],
        )?;
        // A router with a new lease starts from scratch (masquerade also drops the entries of
        // a removed address itself).
        self.exec(&site.router, &["conntrack", "-F"])?;
        site.public = new;
        Ok(new)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in self.namespaces.iter().rev() {
            kill_all_in(ns);
            let _ = run("ip", &["netns", "del", ns]);
        }
    }
}

/// A process started by [`Net::spawn`]: its output lines.
pub struct Proc {
    name: String,
    /// Its index in the [`Net`]'s children.
    child: usize,
    lines: Receiver<(Instant, String)>,
    /// Every standard-output line read so far.
    pub seen: Vec<String>,
    /// When each line of `seen` was read from the pipe.
    pub seen_at: Vec<Instant>,
    stderr: Arc<Mutex<Vec<String>>>,
    /// Its standard input (started with [`Net::spawn_with_input`]).
    stdin: Option<std::process::ChildStdin>,
}

impl Proc {
    /// Write `line` to its standard input.
    #[allow(dead_code)]
    pub fn send(&mut self, line: &str) -> Result<(), String> {
        use std::io::Write;
        let input = self
            .stdin
            .as_mut()
            .ok_or_else(|| format!("{}: started without an input", self.name))?;
        writeln!(input, "{line}")
            .and_then(|()| input.flush())
            .map_err(|e| format!("{}: writing {line:?}: {e}", self.name))
    }

    /// Read standard output until every one of `want` is in some line seen so far (or
    /// `within` passes: an error listing what it printed).
    pub fn wait_for(&mut self, want: &[&str], within: Duration) -> Result<(), String> {
        self.wait_until(&format!("{want:?}"), within, |seen| {
            want.iter().all(|w| seen.iter().any(|l| l.contains(w)))
        })
    }

    /// Read the lines printed so far into [`Proc::seen`]; their number, a mark for
    /// [`Proc::wait_after`].
    pub fn mark(&mut self) -> usize {
        while let Ok(line) = self.lines.try_recv() {
            self.push(line);
        }
        self.seen.len()
    }

    /// Read standard output until a line from index `mark` of [`Proc::seen`] on contains
    /// `want` (or `within` passes: an error listing what it printed); that line's index and
    /// the line.
    pub fn wait_after(
        &mut self,
        mark: usize,
        want: &str,
        within: Duration,
    ) -> Result<(usize, String), String> {
        self.wait_until(&format!("{want:?} after line {mark}"), within, |seen| {
            seen.iter().skip(mark).any(|l| l.contains(want))
        })?;
        let i = (mark..self.seen.len())
            .find(|&i| self.seen[i].contains(want))
            .unwrap();
        Ok((i, self.seen[i].clone()))
    }

    fn wait_until(
        &mut self,
        what: &str,
        within: Duration,
        done: impl Fn(&[String]) -> bool,
    ) -> Result<(), String> {
        let deadline = Instant::now() + within;
        while !done(&self.seen) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.push(line),
                Err(_) => {
                    return Err(format!(
                        "{}: waited {within:?} for {what}; stdout {:#?}; stderr {:#?}",
                        self.name,
                        self.seen,
                        self.stderr.lock().unwrap()
                    ))
                }
            }
        }
        Ok(())
    }

    /// The last line seen that contains `needle`.
    pub fn last_line(&self, needle: &str) -> Option<&str> {
        self.seen
            .iter()
            .rev()
            .find(|l| l.contains(needle))
            .map(|s| s.as_str())
    }

    fn push(&mut self, (at, line): (Instant, String)) {
        self.seen_at.push(at);
        self.seen.push(line);
    }

    /// When the first line seen that contains `needle` was read.
    pub fn line_at(&self, needle: &str) -> Option<Instant> {
        let i = self.seen.iter().position(|l| l.contains(needle))?;
        Some(self.seen_at[i])
    }

    /// Its standard error so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// The first line seen that contains `needle`.
    pub fn line(&self, needle: &str) -> Option<&str> {
        self.seen
            .iter()
            .find(|l| l.contains(needle))
            .map(|s| s.as_str())
    }
}
