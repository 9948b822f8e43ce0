//! Registering and logging in with the `natter` crate, against a real login server.
//!
//! `cargo run -p natter --example login -- NETWORK_FILE USER` logs `USER` in on the network
//! of `NETWORK_FILE` (the password comes from `NATTER_PASSWORD`; `--register` creates the
//! account first), keeping the device's keys in `./natter-data`. Without arguments it starts
//! a login server of its own in a temporary directory and shows the whole story: register,
//! a wrong password, a login, a renewal without the password.

use natter::{Client, LoginError, Network};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [network, user, rest @ ..] = &args[..] {
        let client = Client::builder(Network::from_file(network)?)
            .data_dir("natter-data")
            .build()?;
        let password = std::env::var("NATTER_PASSWORD").ok();
        if rest.iter().any(|a| a == "--register") {
            client.register(user, password.as_deref().ok_or("set NATTER_PASSWORD")?)?;
            println!("registered {user}");
        }
        let info = client.login(user, password.as_deref())?;
        println!("logged in as {} on device {}", info.user, info.device);
        return Ok(());
    }

    // A real login server (TLS 1.3, SQLite, Argon2id) in a temporary directory.
    let server = natter_fixtures::LoginServer::start();
    let dir = tempfile::tempdir()?;
    let client = Client::builder(Network::from_file(server.network_path())?)
        .data_dir(dir.path())
        .build()?;
    client.register("alice", "correct horse battery")?;
    println!("registered alice at {}", server.address());
    match client.login("alice", Some("not her password")) {
        Err(LoginError::WrongPassword) => println!("a wrong password is refused"),
        other => return Err(format!("expected a wrong password, got {other:?}").into()),
    }
    let first = client.login("alice", Some("correct horse battery"))?;
    println!(
        "logged in as {} on device {} in {:.0} ms",
        first.user,
        first.device,
        first.took.as_secs_f64() * 1000.0
    );
    let renewed = client.login("alice", None)?;
    assert!(renewed.renewed);
    println!("renewed without the password");
    Ok(())
}
