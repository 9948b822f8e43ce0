//! `natter login-server`, `natter register` and `natter login`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use natter::{Client, LoginError, LoginInfo, Network, PasswordNeeded, RegisterError, Version};
use natter_server::runtime::{LoginServerHandle, LoginServerOptions};

/// This build's version, as the login server sees it.
pub fn client_version() -> Version {
    Version::parse(env!("CARGO_PKG_VERSION")).unwrap_or_default()
}

/// Options of `natter login-server`.
#[derive(clap::Args, Debug)]
pub struct LoginServerArgs {
    /// Data directory: keys, TLS certificate, SQLite database, network file (created 0700).
    #[arg(long)]
    pub data: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:4433")]
    pub listen: SocketAddr,
    /// PostgreSQL URL (several login servers can share one database); SQLite otherwise.
    #[arg(long)]
    pub db: Option<String>,
    /// The address clients should connect to, written to the network file.
    #[arg(long)]
    pub public_address: Option<String>,
    /// The TLS server name.
    #[arg(long, default_value = "natter-login")]
    pub server_name: String,
    /// A CA-issued certificate chain (PEM) instead of the self-signed one.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Oldest client version accepted (MAJOR.MINOR.PATCH).
    #[arg(long, value_parser = parse_version)]
    pub min_version: Option<Version>,
    /// Newest client version; older ones are told to upgrade.
    #[arg(long, value_parser = parse_version)]
    pub recommended_version: Option<Version>,
    /// Days after expiry during which a certificate can still be renewed without the password.
    #[arg(long, default_value_t = 30)]
    pub renewal_grace_days: u32,
    /// A bootstrap super node (IP:PORT) to list in the network file; repeat it or separate
    /// addresses with commas. Entries already in the network file are kept.
    #[arg(long, value_delimiter = ',')]
    pub bootstrap: Vec<SocketAddr>,
    /// Read options from this TOML file: each flag is a key (its name with underscores, e.g.
    /// `public_address = "login.example.org:4433"`, `bootstrap = ["198.51.100.7:4000"]`);
    /// flags given on the command line override it.
    #[arg(long, value_name = "FILE.toml")]
    pub config: Option<PathBuf>,
}

fn parse_version(s: &str) -> Result<Version, String> {
    Version::parse(s).ok_or_else(|| format!("{s:?} is not MAJOR.MINOR.PATCH"))
}

/// Run a login server until interrupted.
pub fn login_server(args: LoginServerArgs) -> i32 {
    let mut o = LoginServerOptions::new(&args.data, args.listen);
    o.database_url = args.db;
    o.public_address = args.public_address;
    o.server_name = args.server_name;
    o.tls_pem = args.tls_cert.zip(args.tls_key);
    o.renewal_grace = Duration::from_secs(u64::from(args.renewal_grace_days) * 24 * 3600);
    o.bootstrap = args.bootstrap;
    if let Some(v) = args.min_version {
        o.minimum_version = v;
    }
    o.recommended_version = args
        .recommended_version
        .unwrap_or(o.minimum_version.max(client_version()));
    let server = match LoginServerHandle::start(o) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("natter login-server: {e}");
            return 1;
        }
    };
    println!("login server listening on {}", server.local_addr());
    println!(
        "network file: {} (give it to clients and super nodes)",
        server.network_path().display()
    );
    loop {
        match server.events().recv() {
            Ok(e) => tracing::info!(event = ?e, "login"),
            Err(_) => return 0,
        }
    }
}

/// Options shared by `register` and `login`.
#[derive(clap::Args, Debug)]
pub struct AccountArgs {
    /// The network file from the login server.
    #[arg(long)]
    pub network: PathBuf,
    /// User name.
    #[arg(long)]
    pub user: String,
    /// This device's data directory, the same as `natter node --data` and `natter client
    /// --data` take: its keys and certificate live in `DIR/device`.
    #[arg(long, default_value = "natter-data")]
    pub data: PathBuf,
    /// Read the password from the first line of standard input instead of prompting.
    #[arg(long)]
    pub password_stdin: bool,
}

fn password(args: &AccountArgs, prompt: &str) -> Result<String, String> {
    read_password(args.password_stdin, prompt)
}

/// The password from `NATTER_PASSWORD`, the first line of standard input (`stdin`), or a
/// prompt on the terminal.
pub fn read_password(stdin: bool, prompt: &str) -> Result<String, String> {
    if let Ok(p) = std::env::var("NATTER_PASSWORD") {
        return Ok(p);
    }
    if stdin {
        let mut line = String::new();
        let n = std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| format!("reading the password: {e}"))?;
        if n == 0 {
            return Err("--password-stdin: standard input is empty".into());
        }
        return Ok(line.trim_end_matches(['\r', '\n']).to_string());
    }
    rpassword::prompt_password(prompt).map_err(|e| {
        format!("cannot prompt for a password ({e}): use --password-stdin or NATTER_PASSWORD")
    })
}

fn open(args: &AccountArgs) -> Result<Client, String> {
    let network = Network::from_file(&args.network).map_err(|e| e.to_string())?;
    Client::builder(network)
        .data_dir(&args.data)
        .build()
        .map_err(|e| format!("device data directory {}: {e}", args.data.display()))
}

fn explain(e: &LoginError) -> String {
    match e {
        LoginError::UnknownUser => "unknown user: register first with `natter register`".into(),
        other => other.to_string(),
    }
}

/// Seconds since the Unix epoch of `t`.
fn unix(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Create an account, then log this device in.
pub fn register(args: AccountArgs) -> i32 {
    let run = || -> Result<(), String> {
        let client = open(&args)?;
        let pw = password(&args, "New password (10+ characters): ")?;
        client.register(&args.user, &pw).map_err(|e| match e {
            RegisterError::NameTaken(_) => {
                format!("the name {:?} is taken: choose another", args.user)
            }
            other => other.to_string(),
        })?;
        println!("registered {}", args.user);
        let li = client
            .login(&args.user, Some(&pw))
            .map_err(|e| explain(&e))?;
        println!(
            "logged in: device {} certified until unix time {}",
            li.device,
            unix(li.valid_until)
        );
        Ok(())
    };
    match run() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("natter register: {e}");
            1
        }
    }
}

/// Log `user` in on `client`: renew the stored certificate without the password when the
/// server allows it; when it does not (none stored, expired too long ago, no longer
/// accepted), get the password from `ask` and log in with it.
pub fn login_or_ask(
    client: &Client,
    user: &str,
    ask: impl FnOnce() -> Result<String, String>,
) -> Result<LoginInfo, String> {
    match client.login(user, None) {
        Err(LoginError::PasswordNeeded(why)) => {
            if why != PasswordNeeded::NoCertificate {
                eprintln!("{why}: the password is needed");
            }
            let pw = ask().map_err(|e| format!("the password is needed: {e}"))?;
            client.login(user, Some(&pw)).map_err(|e| explain(&e))
        }
        other => other.map_err(|e| explain(&e)),
    }
}

/// Log this device in (renewing without the password when possible).
pub fn login_cmd(args: AccountArgs) -> i32 {
    let run = || -> Result<(), String> {
        let client = open(&args)?;
        let li = login_or_ask(&client, &args.user, || password(&args, "Password: "))?;
        println!(
            "logged in as {} ({}) in {:.0} ms: device {} certified until unix time {}",
            li.user,
            if li.renewed {
                "renewed without password"
            } else {
                "password"
            },
            li.took.as_secs_f64() * 1000.0,
            li.device,
            unix(li.valid_until)
        );
        if let Some(v) = li.upgrade_recommended {
            println!("an upgrade is recommended: version {v} is available");
        }
        Ok(())
    };
    match run() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("natter login: {e}");
            1
        }
    }
}
