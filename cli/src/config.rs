//! `--config FILE.toml` for `natter node` and `natter login-server`.
//!
//! A config file holds the subcommand's flags as TOML keys: the flag's long name with
//! underscores (`--public-address` is `public_address`), a string or number for a flag that
//! takes a value, `true` or `false` for a switch, and a list for a flag that can be repeated
//! (`bootstrap = ["198.51.100.7:4000"]`, `search = ["alice"]`). Flags on the command line
//! override the file, key by key: a repeated flag on the command line replaces the file's list,
//! and a switch on the command line wins over a file key it conflicts with (`--supernode` over
//! `no_supernode = true`).
//!
//! The file is expanded into flags before `clap` parses the command line, so every flag has a
//! key by construction, each value goes through the flag's own parser, and required options
//! may come from either place. Unknown keys, values of the wrong shape and values the flag
//! refuses are errors that name the file and the key.

use std::ffi::OsString;
use std::path::Path;

/// Subcommands that take `--config`.
const WITH_CONFIG: &[&str] = &["node", "login-server"];

/// Keys that are flags but make no sense in a file.
const NOT_IN_FILE: &[&str] = &["config", "help", "version"];

/// The command line `argv` with the options of its `--config FILE` (if the subcommand takes
/// one and it is given) inserted after the subcommand's name, minus those the command line
/// sets itself. `cli` is the program's whole command. The error is a message for the user.
pub fn expand(cli: &clap::Command, argv: Vec<OsString>) -> Result<Vec<OsString>, String> {
    let mut cli = cli.clone();
    cli.build();
    // The subcommand: the first word after the program name that is not a flag (the program
    // itself has only `--help` and `--version`).
    let Some(at) = argv
        .iter()
        .skip(1)
        .position(|a| !a.to_string_lossy().starts_with('-'))
        .map(|i| i + 1)
    else {
        return Ok(argv);
    };
    let name = argv[at].to_string_lossy().into_owned();
    if !WITH_CONFIG.contains(&name.as_str()) {
        return Ok(argv);
    }
    let Some(sub) = cli.find_subcommand(&name) else {
        return Ok(argv);
    };
    let Some(given) = given_on_command_line(sub, &argv[at + 1..]) else {
        // `--help`: let clap print it.
        return Ok(argv);
    };
    let Some(path) = given.config.clone() else {
        return Ok(argv);
    };
    let from_file = options_from_file(sub, &path, &given.ids)?;
    let mut out = argv[..=at].to_vec();
    out.extend(from_file);
    out.extend_from_slice(&argv[at + 1..]);
    Ok(out)
}

/// What the command line itself says.
struct Given {
    /// Ids of the flags it gives.
    ids: Vec<String>,
    /// The value of its (last) `--config`.
    config: Option<OsString>,
}

/// The flags given on the command line after the subcommand (`None` when help is asked for).
fn given_on_command_line(sub: &clap::Command, words: &[OsString]) -> Option<Given> {
    let mut given = Given {
        ids: Vec::new(),
        config: None,
    };
    let mut i = 0;
    while i < words.len() {
        let word = words[i].to_string_lossy().into_owned();
        i += 1;
        if word == "--" {
            break;
        }
        if word == "-h" {
            return None;
        }
        let Some(flag) = word.strip_prefix("--") else {
            continue;
        };
        let (long, inline) = match flag.split_once('=') {
            Some((l, v)) => (l, Some(v)),
            None => (flag, None),
        };
        if long == "help" {
            return None;
        }
        let Some(arg) = sub.get_arguments().find(|a| a.get_long() == Some(long)) else {
            continue; // clap reports it
        };
        let takes_value = arg.get_action().takes_values();
        let value = match inline {
            Some(v) => Some(OsString::from(v)),
            None if takes_value && i < words.len() => {
                i += 1;
                Some(words[i - 1].clone())
            }
            None => None,
        };
        if arg.get_id() == "config" {
            given.config = value;
        }
        given.ids.push(arg.get_id().to_string());
    }
    Some(given)
}

/// The flags a config file sets, except those in `skip` (given on the command line) and those
/// that conflict with one of them.
fn options_from_file(
    sub: &clap::Command,
    path: &OsString,
    skip: &[String],
) -> Result<Vec<OsString>, String> {
    let path = Path::new(path);
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the config file {shown}: {e}"))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| format!("the config file {shown} is not valid TOML: {e}"))?;
    let keys: Vec<&clap::Arg> = sub
        .get_arguments()
        .filter(|a| a.get_long().is_some() && !NOT_IN_FILE.contains(&a.get_id().as_str()))
        .collect();
    let mut out = Vec::new();
    for (key, value) in &table {
        let Some(arg) = keys.iter().find(|a| a.get_id() == key.as_str()) else {
            return Err(unknown_key(&shown.to_string(), key, &keys));
        };
        let here = |what: String| format!("config file {shown}, key `{key}`: {what}");
        let long = arg.get_long().unwrap_or_default();
        let overridden = skip.iter().any(|s| s == key || conflict(sub, arg, s));
        let values: Vec<String> = if !arg.get_action().takes_values() {
            match value {
                toml::Value::Boolean(true) => vec![],
                toml::Value::Boolean(false) => continue,
                _ => return Err(here("a switch: write `true` or `false`".into())),
            }
        } else {
            match value {
                toml::Value::Array(items) => {
                    if !matches!(arg.get_action(), clap::ArgAction::Append) {
                        return Err(here(
                            "takes one value, not a list (write the value as on the \
                             command line, in quotes)"
                                .into(),
                        ));
                    }
                    items
                        .iter()
                        .map(|v| scalar(v).ok_or_else(|| here(format!("{v} is not a value"))))
                        .collect::<Result<_, _>>()?
                }
                v => vec![scalar(v).ok_or_else(|| here(format!("{v} is not a value")))?],
            }
        };
        check(arg, &values).map_err(here)?;
        if overridden {
            continue;
        }
        if values.is_empty() {
            out.push(OsString::from(format!("--{long}")));
        }
        for v in values {
            out.push(OsString::from(format!("--{long}={v}")));
        }
    }
    Ok(out)
}

/// True when `arg` and the flag `other` (an id) conflict, as either declares it.
fn conflict(sub: &clap::Command, arg: &clap::Arg, other: &str) -> bool {
    let names = |a: &clap::Arg, b: &str| {
        sub.get_arg_conflicts_with(a)
            .iter()
            .any(|c| c.get_id().as_str() == b)
    };
    names(arg, other)
        || sub
            .get_arguments()
            .find(|a| a.get_id() == other)
            .is_some_and(|o| names(o, arg.get_id().as_str()))
}

/// A string or number as the command line would give it; tables, dates and booleans are not.
fn scalar(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        _ => None,
    }
}

/// Run each value through the flag's own parser.
fn check(arg: &clap::Arg, values: &[String]) -> Result<(), String> {
    // A command with this one flag (named after its id): the flag's relations to others
    // (requires, conflicts) do not matter here.
    let id = arg.get_id().clone();
    let mut one = clap::Arg::new(id.clone())
        .long(id.clone())
        .action(arg.get_action().clone())
        .value_parser(arg.get_value_parser().clone());
    if let Some(d) = arg.get_value_delimiter() {
        one = one.value_delimiter(d);
    }
    let cmd = clap::Command::new("natter").no_binary_name(true).arg(one);
    for v in values {
        if let Err(e) = cmd.clone().try_get_matches_from([format!("--{id}={v}")]) {
            let why = std::error::Error::source(&e)
                .map(|s| s.to_string())
                .unwrap_or_else(|| {
                    let text = e.to_string();
                    let first = text.lines().next().unwrap_or_default();
                    first.trim_start_matches("error: ").to_string()
                });
            return Err(format!("{v:?} is not valid: {why}"));
        }
    }
    Ok(())
}

/// The error for a key no flag has, with a hint.
fn unknown_key(path: &str, key: &str, keys: &[&clap::Arg]) -> String {
    let known: Vec<&str> = keys.iter().map(|a| a.get_id().as_str()).collect();
    let underscored = key.replace('-', "_");
    let hint = if key == "config" {
        " (a config file cannot name another one)".to_string()
    } else if underscored != key && known.contains(&underscored.as_str()) {
        format!(" (did you mean `{underscored}`? keys use underscores)")
    } else {
        String::new()
    };
    format!(
        "config file {path}: unknown key `{key}`{hint}; the keys are: {}",
        known.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[command(subcommand)]
        command: Sub,
    }

    #[derive(clap::Subcommand, Debug)]
    enum Sub {
        Node {
            #[arg(long)]
            data: std::path::PathBuf,
            #[arg(long, default_value = "0.0.0.0:4000")]
            listen: std::net::SocketAddr,
            #[arg(long, conflicts_with = "no_supernode")]
            supernode: bool,
            #[arg(long)]
            no_supernode: bool,
            #[arg(long, value_delimiter = ',')]
            search: Vec<String>,
            #[arg(long)]
            config: Option<std::path::PathBuf>,
        },
        Other {
            #[arg(long)]
            config: Option<std::path::PathBuf>,
        },
    }

    fn run(file: &str, args: &[&str]) -> Result<Vec<String>, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, file).unwrap();
        let mut argv: Vec<OsString> = vec!["natter".into()];
        let file = path.to_string_lossy();
        argv.extend(
            args.iter()
                .map(|a| OsString::from(a.replace("FILE", &file))),
        );
        let cmd = <Cli as clap::CommandFactory>::command();
        expand(&cmd, argv).map(|v| {
            v.into_iter()
                .skip(2)
                .map(|s| s.to_string_lossy().into_owned())
                .filter(|s| !s.contains("c.toml"))
                .collect()
        })
    }

    #[test]
    fn file_keys_become_flags_and_the_command_line_wins() {
        let file = "data = \"/d\"\nlisten = \"1.2.3.4:5\"\nno_supernode = true\n\
                    search = [\"a\", \"b\"]\n";
        let out = run(file, &["node", "--config", "FILE"]).unwrap();
        assert_eq!(
            out,
            [
                "--data=/d",
                "--listen=1.2.3.4:5",
                "--no-supernode",
                "--search=a",
                "--search=b",
                "--config"
            ]
        );
        let out = run(
            file,
            &[
                "node",
                "--listen",
                "9.9.9.9:9",
                "--supernode",
                "--search=c",
                "--config=FILE",
            ],
        )
        .unwrap();
        assert_eq!(
            out,
            [
                "--data=/d",
                "--listen",
                "9.9.9.9:9",
                "--supernode",
                "--search=c"
            ]
        );
        // The result parses.
        let cmd = <Cli as clap::CommandFactory>::command();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, file).unwrap();
        let argv: Vec<OsString> = vec![
            "natter".into(),
            "node".into(),
            "--supernode".into(),
            "--config".into(),
            path.into_os_string(),
        ];
        let cli = <Cli as clap::Parser>::try_parse_from(expand(&cmd, argv).unwrap()).unwrap();
        let Sub::Node {
            supernode,
            no_supernode,
            listen,
            ..
        } = cli.command
        else {
            panic!()
        };
        assert!(supernode && !no_supernode);
        assert_eq!(listen.to_string(), "1.2.3.4:5");
    }

    #[test]
    fn mistakes_name_the_file_and_the_key() {
        let e = run("lsiten = \"x\"", &["node", "--config", "FILE"]).unwrap_err();
        assert!(
            e.contains("unknown key `lsiten`") && e.contains("the keys are: data, listen"),
            "{e}"
        );
        let e = run("no-supernode = true", &["node", "--config", "FILE"]).unwrap_err();
        assert!(e.contains("did you mean `no_supernode`"), "{e}");
        let e = run("listen = \"nowhere\"", &["node", "--config", "FILE"]).unwrap_err();
        assert!(
            e.contains("key `listen`") && e.contains("\"nowhere\" is not valid"),
            "{e}"
        );
        let e = run("listen = [\"1.2.3.4:5\"]", &["node", "--config", "FILE"]).unwrap_err();
        assert!(e.contains("not a list"), "{e}");
        let e = run("supernode = \"yes\"", &["node", "--config", "FILE"]).unwrap_err();
        assert!(e.contains("`true` or `false`"), "{e}");
        let e = run("listen = ", &["node", "--config", "FILE"]).unwrap_err();
        assert!(e.contains("not valid TOML"), "{e}");
        let e = run("", &["node", "--config", "/nonexistent/x.toml"]).unwrap_err();
        assert!(
            e.contains("cannot read the config file /nonexistent/x.toml"),
            "{e}"
        );
        // Help and other subcommands are left alone.
        assert!(run("junk", &["node", "--config", "FILE", "--help"]).is_ok());
        assert!(run("junk", &["other", "--config", "FILE"]).is_ok());
    }
}
