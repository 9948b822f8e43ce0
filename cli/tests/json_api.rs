//! `natter client --json` driven by a program: two clients log in, search, call with WAV audio
//! both ways and hang up; every event they print is checked against docs/json-api.md.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{is, natter, network_with_a_super_node, output_lines, start_as, Children, JsonClient};
use serde_json::Value;

/// The events docs/json-api.md documents, with their fields.
fn documented() -> BTreeMap<String, BTreeSet<String>> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/json-api.md"))
        .unwrap();
    let mut events = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in doc.lines() {
        if let Some(name) = line.strip_prefix("### `").and_then(|r| r.strip_suffix('`')) {
            current = Some(name.to_string());
            events.insert(name.to_string(), BTreeSet::new());
        } else if line.starts_with("## ") {
            current = None;
        } else if let (Some(ev), Some(rest)) = (&current, line.strip_prefix("- ")) {
            // "- `a`, `b`: ..." documents a and b.
            let names = rest.split(':').next().unwrap_or("");
            for part in names.split(',') {
                if let Some(f) = part
                    .trim()
                    .strip_prefix('`')
                    .and_then(|p| p.strip_suffix('`'))
                {
                    events.get_mut(ev).unwrap().insert(f.to_string());
                }
            }
        }
    }
    events
}

fn state(s: &'static str) -> impl Fn(&Value) -> bool {
    move |v| v["event"] == "call_state" && v["state"] == s
}

#[test]
fn two_programs_call_each_other_through_the_json_interface() {
    let dir = tempfile::tempdir().unwrap();
    let mut children = Children(Vec::new());
    let network = network_with_a_super_node(dir.path(), &mut children);
    let speech = concat!(env!("CARGO_MANIFEST_DIR"), "/../media/testdata/speech.wav");
    let mut start = |user: &'static str, processing: &'static str| {
        let heard = dir.path().join(format!("{user}-heard.wav"));
        let mut child = start_as(
            "client",
            &network,
            &dir.path().join(user),
            user,
            "a json password",
            0,
            &[
                "--json",
                "--audio-in",
                speech,
                "--audio-out",
                heard.to_str().unwrap(),
                "--voice-processing",
                processing,
            ],
        );
        let lines = output_lines(&mut child);
        let stdin = child.stdin.take().unwrap();
        children.0.push(child);
        (
            JsonClient {
                lines,
                stdin,
                seen: Vec::new(),
                who: user,
            },
            heard,
        )
    };
    let (mut alice, alice_heard) = start("alice", "auto");
    let (mut bob, bob_heard) = start("bob", "noise");
    for c in [&mut alice, &mut bob] {
        c.wait(is("logged_in"));
        c.wait(is("attached"));
    }
    // Search, then call.
    bob.send(serde_json::json!({"cmd": "search", "user": "alice"}));
    let found = bob.wait(is("search_result"));
    assert_eq!(found["result"], "found", "{found}");
    assert_eq!(found["devices"][0]["online"], true);
    bob.send(serde_json::json!({"cmd": "nonsense"}));
    bob.wait(is("error"));
    // A user nobody registered: a clear reason, not a hang.
    bob.send(serde_json::json!({"cmd": "call", "user": "nobody"}));
    let failed = bob.wait(is("dial_failed"));
    assert_eq!(failed["reason"], "no such user", "{failed}");
    bob.send(serde_json::json!({"cmd": "call", "user": "alice"}));
    bob.wait(is("calling"));
    let incoming = alice.wait(is("incoming_call"));
    assert_eq!(incoming["user"], "bob");
    alice.send(serde_json::json!({"cmd": "answer"}));
    for c in [&mut alice, &mut bob] {
        c.saw(state("connected"));
        c.saw(is("first_media"));
        c.wait(|v| v["event"] == "call_stats" && v["frames_in"].as_u64() > Some(50));
    }
    bob.saw(|v| v["event"] == "call_path" && v["path"] == "direct-lan");
    bob.send(serde_json::json!({"cmd": "status"}));
    let status = bob.wait(is("status"));
    assert!(status["call"].is_string(), "{status}");
    // The audio devices (none may exist here), and a call whose audio goes to a WAV file
    // has no speaker to switch.
    bob.send(serde_json::json!({"cmd": "audio_devices"}));
    let listed = bob.wait(is("audio_devices"));
    assert!(listed["devices"].is_array(), "{listed}");
    bob.send(serde_json::json!({"cmd": "set_speaker", "device": "natter_a"}));
    let refused = bob.wait(is("error"));
    assert!(
        refused["message"]
            .as_str()
            .is_some_and(|m| m.contains("does not use an audio device")),
        "{refused}"
    );
    // Voice processing: off for WAV audio (auto, alice), as --voice-processing says (bob),
    // changed by a command, and reported in the statistics.
    alice.saw(|v| v["event"] == "call_stats" && v["voice_processing"] == "off");
    bob.saw(|v| v["event"] == "call_stats" && v["voice_processing"] == "noise");
    bob.send(serde_json::json!({"cmd": "voice_processing", "set": "echo,noise"}));
    let set = bob.wait(is("voice_processing"));
    assert_eq!(set["set"], "echo,noise", "{set}");
    bob.wait(|v| v["event"] == "call_stats" && v["voice_processing"] == "echo,noise");
    bob.send(serde_json::json!({"cmd": "voice_processing", "set": "reverb"}));
    bob.wait(is("error"));
    bob.send(serde_json::json!({"cmd": "hangup"}));
    let ended = bob.wait(state("ended"));
    assert_eq!(ended["reason"], "hung_up");
    let ended = alice.wait(state("ended"));
    assert_eq!(ended["reason"], "peer_hung_up");
    for c in [&mut alice, &mut bob] {
        let audio = c.wait(is("call_audio"));
        assert!(audio["frames_received"].as_u64() > Some(50), "{audio}");
    }
    // The buddy list: edits answered with the entry, the list, a sync with the backup.
    bob.send(serde_json::json!({"cmd": "add_contact", "user": "Alice", "note": "bob here"}));
    let added = bob.wait(is("contact"));
    assert_eq!(
        (&added["user"], &added["contact"], &added["changed"]),
        (&"alice".into(), &true.into(), &true.into()),
        "{added}"
    );
    bob.send(serde_json::json!({"cmd": "set_nickname", "user": "alice", "nickname": "Al"}));
    bob.send(serde_json::json!({"cmd": "set_group", "user": "alice", "label": "friends"}));
    bob.send(serde_json::json!({"cmd": "block", "user": "mallory"}));
    bob.send(serde_json::json!({"cmd": "add_contact", "user": "alice"}));
    let again = bob.wait(|v| v["event"] == "contact" && v["changed"] == false);
    assert_eq!(again["groups"], serde_json::json!(["friends"]), "{again}");
    bob.send(serde_json::json!({"cmd": "set_group", "user": "alice", "label": ""}));
    bob.wait(is("error"));
    bob.send(serde_json::json!({"cmd": "contacts"}));
    let list = bob.wait(is("contacts"));
    assert_eq!(list["contacts"][0]["nickname"], "Al", "{list}");
    assert_eq!(list["contacts"][1]["user"], "mallory", "{list}");
    assert_eq!(list["contacts"][1]["blocked"], true, "{list}");
    bob.send(serde_json::json!({"cmd": "sync_contacts"}));
    let synced = bob.wait(is("contacts_synced"));
    assert!(synced["version"].as_u64() >= Some(2), "{synced}");
    // Bob's request waits for alice: her sync finds it, she accepts, bob hears of it.
    alice.send(serde_json::json!({"cmd": "sync_contacts"}));
    let asked = alice.wait(is("contact_request"));
    assert_eq!(
        (&asked["user"], &asked["note"]),
        (&"bob".into(), &"bob here".into())
    );
    alice.send(serde_json::json!({"cmd": "contacts"}));
    let waiting = alice.wait(is("contacts"));
    assert_eq!(waiting["contacts"][0]["request"], "bob here", "{waiting}");
    alice.send(serde_json::json!({"cmd": "accept_contact", "user": "bob"}));
    let accepted = alice.wait(is("contact"));
    assert!(
        accepted["request"].is_null() && accepted["contact"] == true,
        "{accepted}"
    );
    alice.send(serde_json::json!({"cmd": "sync_contacts"}));
    alice.wait(is("contacts_synced"));
    bob.send(serde_json::json!({"cmd": "sync_contacts"}));
    bob.wait(is("contact_accepted"));
    bob.send(serde_json::json!({"cmd": "add_contact", "user": "nobody-at-all"}));
    bob.send(serde_json::json!({"cmd": "sync_contacts"}));
    bob.wait(is("contact_request_failed"));
    bob.send(serde_json::json!({"cmd": "decline_contact", "user": "alice"}));
    let unchanged = bob.wait(is("contact"));
    assert_eq!(unchanged["changed"], false, "{unchanged}");
    // Contacts see each other's presence, pushed: alice turns invisible, then back.
    alice.send(serde_json::json!({"cmd": "set_presence", "availability": "invisible"}));
    bob.wait(|v| {
        v["event"] == "contact_presence" && v["user"] == "alice" && v["availability"] == "offline"
    });
    alice.send(serde_json::json!({"cmd": "set_presence", "availability": "online"}));
    bob.wait(|v| {
        v["event"] == "contact_presence" && v["user"] == "alice" && v["availability"] == "online"
    });
    bob.send(serde_json::json!({"cmd": "contacts"}));
    let list = bob.wait(is("contacts"));
    assert_eq!(list["contacts"][0]["availability"], "online", "{list}");
    // Presence: do not disturb, then back; a mood too long is refused.
    bob.send(
        serde_json::json!({"cmd": "set_presence", "availability": "dnd", "mood": "busy busy"}),
    );
    let p = bob.wait(is("presence"));
    assert_eq!(
        (&p["availability"], &p["mood"]),
        (&"dnd".into(), &"busy busy".into())
    );
    bob.send(
        serde_json::json!({"cmd": "set_presence", "availability": "away", "mood": "x".repeat(300)}),
    );
    bob.wait(is("error"));
    bob.send(serde_json::json!({"cmd": "away_after", "seconds": 60}));
    bob.send(serde_json::json!({"cmd": "set_presence", "availability": "online"}));
    bob.send(serde_json::json!({"cmd": "report_idle", "seconds": 61}));
    bob.wait(|v| v["event"] == "presence" && v["availability"] == "away");
    bob.send(serde_json::json!({"cmd": "report_idle", "seconds": 0}));
    bob.wait(|v| v["event"] == "presence" && v["availability"] == "online");
    // The account: its devices, and a password change that revokes the others.
    bob.send(serde_json::json!({"cmd": "devices"}));
    let devices = bob.wait(is("devices"));
    assert_eq!(
        devices["devices"].as_array().map(Vec::len),
        Some(1),
        "{devices}"
    );
    assert_eq!(devices["devices"][0]["this_device"], true, "{devices}");
    assert!(devices["devices"][0]["revoked_at"].is_null(), "{devices}");
    bob.send(
        serde_json::json!({"cmd": "revoke_device", "device": "ffffffffffff",
                                "password": "a json password"}),
    );
    bob.wait(is("error"));
    bob.send(
        serde_json::json!({"cmd": "change_password", "old_password": "not it at all",
                                "new_password": "a newer json password"}),
    );
    let wrong = bob.wait(is("error"));
    assert!(
        wrong["message"]
            .as_str()
            .is_some_and(|m| m.contains("wrong password")),
        "{wrong}"
    );
    bob.send(
        serde_json::json!({"cmd": "change_password", "old_password": "a json password",
                                "new_password": "a newer json password", "revoke_others": true}),
    );
    let changed = bob.wait(is("password_changed"));
    assert_eq!(changed["revoked_others"], true);
    bob.send(serde_json::json!({"cmd": "quit"}));
    // Alice's credentials leave through the interface (to a program's own secret store)...
    alice.send(serde_json::json!({"cmd": "export_credentials"}));
    let creds = alice.wait(is("credentials"));
    assert_eq!(creds["user"], "alice", "{creds}");
    let hex = creds["hex"].as_str().unwrap().to_string();
    alice.send(serde_json::json!({"cmd": "quit"}));
    // It leaves: its standard output closes.
    while let Ok(line) = alice.lines.recv_timeout(std::time::Duration::from_secs(30)) {
        alice.seen.push(serde_json::from_str(&line).unwrap());
    }
    // ... and come back: the same device, started with a fresh --data, renews its
    // certificate without the password and writes no keys to disk.
    let fresh = dir.path().join("alice-elsewhere");
    let mut again = natter()
        .args([
            "client",
            "--json",
            "--user",
            "alice",
            "--network",
            &network,
            "--data",
        ])
        .arg(&fresh)
        .args(["--listen", "127.0.0.1:0", "--no-devices"])
        .env("NATTER_CREDENTIALS", &hex)
        .env("NATTER_PASSWORD", "not the password at all")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut alice = JsonClient {
        lines: output_lines(&mut again),
        stdin: again.stdin.take().unwrap(),
        seen: alice.seen,
        who: "alice again",
    };
    children.0.push(again);
    alice.wait(is("logged_in"));
    alice.send(serde_json::json!({"cmd": "export_credentials"}));
    let same = alice.wait(is("credentials"));
    assert_eq!(same["device"], creds["device"], "{same}");
    assert!(!fresh.join("device/device.key").exists());
    alice.send(serde_json::json!({"cmd": "logout"}));
    alice.wait(is("logged_out"));
    // What each side heard was saved, and is not silence.
    for heard in [alice_heard, bob_heard] {
        let bytes = std::fs::read(&heard).unwrap();
        let samples: Vec<i16> = bytes[44..]
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect();
        let loud = samples.iter().filter(|s| s.unsigned_abs() > 1000).count();
        assert!(loud > 1000, "{}: {loud} loud samples", heard.display());
    }
    // Every event printed is documented, with documented fields only.
    let doc = documented();
    for v in alice.seen.iter().chain(&bob.seen) {
        let name = v["event"]
            .as_str()
            .unwrap_or_else(|| panic!("no event name: {v}"));
        let fields = doc
            .get(name)
            .unwrap_or_else(|| panic!("event {name:?} is not in docs/json-api.md: {v}"));
        for key in v.as_object().unwrap().keys().filter(|k| *k != "event") {
            assert!(
                fields.contains(key),
                "field {key:?} of {name:?} is not in docs/json-api.md: {v}"
            );
        }
    }
}
