//! The interactive client tried as a new user would, in a real terminal (tmux): register with
//! the password typed at the prompt, start the client, call someone, hang up, quit. The screen
//! is captured and checked (and printed with `--nocapture`).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{natter, network_with_a_super_node, start_as, wait_for_lines, Children};

/// A tmux session, killed when dropped.
struct Tmux(String);

impl Tmux {
    fn start(name: &str, command: &str) -> Option<Tmux> {
        let ok = Command::new("tmux")
            .args([
                "new-session",
                "-d",
                "-s",
                name,
                "-x",
                "160",
                "-y",
                "50",
                command,
            ])
            .status()
            .ok()?
            .success();
        ok.then(|| Tmux(name.to_string()))
    }

    fn keys(&self, text: &str) {
        let ok = Command::new("tmux")
            .args(["send-keys", "-t", &self.0, text, "Enter"])
            .status()
            .unwrap()
            .success();
        assert!(ok, "tmux send-keys");
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["capture-pane", "-p", "-S", "-200", "-t", &self.0])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Wait until the screen shows `text` (30 s at most).
    fn wait(&self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let screen = self.screen();
            if screen.contains(text) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "waited for {text:?}; the screen shows:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .status();
    }
}

#[test]
fn a_new_user_calls_from_the_interactive_client() {
    if !natter_fixtures::require_tool("tmux", "NATTER_REQUIRE_TMUX") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut children = Children(Vec::new());
    let network = network_with_a_super_node(dir.path(), &mut children);
    // Someone to call, who answers.
    let mut alice = start_as(
        "client",
        &network,
        &dir.path().join("alice"),
        "alice",
        "alice's password",
        0,
        &["--auto-answer", "--no-devices"],
    );
    wait_for_lines(&mut alice, &["attached to super node"]);
    children.0.push(alice);

    let bin = natter().get_program().to_string_lossy().into_owned();
    let data = dir.path().join("carol");
    let script = format!(
        "{bin} register --user carol --network {network} --data {data} && \
         {bin} client --user carol --network {network} --data {data} --listen 127.0.0.1:0 --no-devices; \
         echo CLIENT EXITED $?; sleep 30",
        data = data.display()
    );
    let name = format!("natter-test-{}", std::process::id());
    let Some(tmux) = Tmux::start(&name, &script) else {
        panic!("tmux could not start a session");
    };
    // Registering asks for the password (typed, not echoed); the client then logs the same
    // device in with its new certificate, without asking again.
    tmux.wait("New password");
    tmux.keys("correct horse battery staple");
    let screen = tmux.wait("client ready");
    assert!(
        !screen.contains("\nPassword:"),
        "the client asked again:\n{screen}"
    );
    tmux.wait("attached to super node");
    tmux.keys("help");
    tmux.wait("call USER");
    tmux.keys("call alice");
    tmux.wait("call connected");
    tmux.wait("first media received");
    tmux.wait("call stats:");
    tmux.keys("hangup");
    tmux.wait("call ended: hung up");
    // The buddy list, in words.
    tmux.keys("add alice hello from carol");
    tmux.keys("nick alice Ally Cat");
    tmux.wait("alice \"Ally Cat\"");
    tmux.keys("group alice book club");
    tmux.keys("block mallory");
    tmux.keys("contacts");
    tmux.wait("2 in the buddy list:");
    tmux.wait("alice \"Ally Cat\" [book club]");
    tmux.wait("mallory (blocked, not a contact)");
    tmux.keys("status dnd in a meeting");
    tmux.wait("presence: do not disturb (\"in a meeting\")");
    tmux.keys("status online");
    tmux.wait("presence: online");
    tmux.keys("sync");
    tmux.wait("buddy list in step with its backup");
    // The account: its devices, and a new password typed at prompts that do not echo it.
    tmux.keys("devices");
    tmux.wait("1 device(s)");
    tmux.keys("passwd revoke-others");
    tmux.wait("Current password:");
    tmux.keys("correct horse battery staple");
    tmux.wait("New password (at least 10 characters):");
    tmux.keys("correct horse battery staple twice");
    tmux.wait("password changed; every other device revoked");
    tmux.keys("quit");
    let screen = tmux.wait("CLIENT EXITED 0");
    eprintln!("---- the client's screen ----\n{screen}\n-----------------------------");
    assert!(!screen.contains("correct horse"), "the password was echoed");
    assert!(!screen.contains("panicked"), "{screen}");
}
