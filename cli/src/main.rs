//! The `natter` program.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use clap::{Parser, Subcommand};

mod demo;

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
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Demo => demo::run(),
    };
    std::process::exit(code);
}
