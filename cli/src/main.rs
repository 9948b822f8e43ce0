//! The `natter` program.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use clap::{CommandFactory, Parser, Subcommand};

/// `println!` for long-running commands: a closed standard output (a reader that went away)
/// must not kill a node or a call.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        // In JSON mode standard output carries JSON events only; people's lines go to
        // standard error with the logs.
        if crate::json_mode() {
            let _ = writeln!(std::io::stderr(), $($t)*);
        } else {
            let _ = writeln!(std::io::stdout(), $($t)*);
        }
    }};
}

/// One event for programs (JSON mode) or one line for people: `report!(json_value, "fmt", ..)`.
macro_rules! report {
    ($json:expr, $($t:tt)*) => {{
        if crate::json_mode() {
            crate::emit($json);
        } else {
            say!($($t)*);
        }
    }};
}

static JSON_MODE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Standard output carries JSON events only (`natter client --json`).
pub(crate) fn json_mode() -> bool {
    JSON_MODE.load(std::sync::atomic::Ordering::Relaxed)
}

/// Switch JSON mode on.
pub(crate) fn set_json_mode() {
    JSON_MODE.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Write one JSON event line to standard output (a closed output is ignored).
pub(crate) fn emit(event: serde_json::Value) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{event}");
    let _ = out.flush();
}

mod accounts;
mod client;
mod config;
mod demo;
mod node;
mod status;

/// Natter: peer-to-peer voice and messaging.
#[derive(Parser)]
#[command(name = "natter", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a whole network on loopback and show what happens, step by step.
    Demo,
    /// Run a login server (accounts, device certificates, version check).
    LoginServer(accounts::LoginServerArgs),
    /// Create an account on a network and log this device in.
    Register(accounts::AccountArgs),
    /// Log this device in (renews its certificate without the password when it can).
    Login(accounts::AccountArgs),
    /// Run a node: join the network, become a super node when suitable.
    Node(node::NodeCommand),
    /// Show a running node's status (role, clients, index, relay, NAT, uptime).
    Status(status::StatusArgs),
    /// Run a client (an ordinary node) that makes and takes calls.
    Client(client::ClientArgs),
    /// Pass a WAV file through the media pipeline over a simulated network.
    MediaLoopback(natter_media::loopback::LoopbackArgs),
    /// Measure echo cancellation: speech played into a synthetic room, its echo through the
    /// voice processing (prints JSON; benches/echo.sh scores it).
    MediaEcho(natter_media::echo::EchoArgs),
}

fn main() {
    // Logs go to standard error; standard output is for results. Colours only on a terminal:
    // not in journald or a log file.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NATTER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    // `--config FILE.toml` (node, login-server): the file's options become flags.
    let argv = match config::expand(&Cli::command(), std::env::args_os().collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("natter: {e}");
            std::process::exit(2);
        }
    };
    let cli = Cli::parse_from(argv);
    let code = match cli.command {
        Command::Demo => demo::run(),
        Command::LoginServer(a) => accounts::login_server(a),
        Command::Register(a) => accounts::register(a),
        Command::Login(a) => accounts::login_cmd(a),
        Command::Node(a) => node::run(a),
        Command::Status(a) => status::status_cmd(a),
        Command::Client(a) => client::run(a),
        Command::MediaLoopback(a) => natter_media::loopback::main(a),
        Command::MediaEcho(a) => natter_media::echo::main(a),
    };
    std::process::exit(code);
}
