//! The README works as written: every `sh` block is run, line by line and in order, against
//! the demo (`crossfade demo`, as the quick start starts it), with the `crossfade` under test
//! first on PATH. A line that exits other than 0 fails the test unless it announces its exit
//! code in a trailing `# exits N` comment. The demo's own fixed addresses are used (8080,
//! 9901, 18081, 18082), since those are what the README's lines name.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Lines of the README that this test stands for instead of running them, and why.
const STANDS_FOR: &[(&str, &str)] = &[
    (
        "cargo run --release -- demo",
        "this test starts `crossfade demo` itself",
    ),
    ("cargo test", "this test is part of it"),
    (
        "cargo install --path . --locked",
        "the binary under test is first on PATH",
    ),
];

/// The `sh` blocks' commands, in order: (line number, command, expected exit code).
fn commands(readme: &str) -> Vec<(usize, String, i32)> {
    let mut out = Vec::new();
    let mut in_sh = false;
    let mut pending = String::new();
    for (i, line) in readme.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            in_sh = trimmed == "```sh";
            continue;
        }
        if !in_sh || trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            pending.push_str(head.trim_end());
            pending.push(' ');
            continue;
        }
        let command = std::mem::take(&mut pending) + trimmed;
        let expected = command
            .rsplit_once("# exits ")
            .and_then(|(_, n)| n.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        out.push((i + 1, command, expected));
    }
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// Kills the demo when the test ends, however it ends.
struct Demo(std::process::Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn every_command_in_the_readme_works_as_written() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(repo.join("README.md")).unwrap();
    let commands = commands(&readme);
    assert!(
        commands.len() > 15,
        "the README's sh blocks were not found: {commands:?}"
    );

    // A clone of its own: the demo's config and rules as shipped, except that the release
    // state goes to this directory (not the developer's /tmp/crossfade-demo-state.json).
    let clone = tempfile::tempdir().unwrap();
    copy_dir(&repo.join("config"), &clone.path().join("config"));
    copy_dir(&repo.join("rules"), &clone.path().join("rules"));
    let demo_toml = clone.path().join("config/demo.toml");
    let text = std::fs::read_to_string(&demo_toml).unwrap();
    let state = clone.path().join("state.json");
    let text = text.replace(
        "state_file = \"/tmp/crossfade-demo-state.json\"",
        &format!("state_file = \"{}\"", state.display()),
    );
    assert!(
        text.contains(&*state.to_string_lossy()),
        "demo.toml changed"
    );
    std::fs::write(&demo_toml, text).unwrap();

    let bin = Path::new(env!("CARGO_BIN_EXE_crossfade"));
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for port in [8080, 9901, 18081, 18082] {
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "127.0.0.1:{port} is taken (a demo still running?); the README's lines need it"
        );
    }
    let log = std::fs::File::create(clone.path().join("demo.log")).unwrap();
    let _demo = Demo(
        Command::new(bin)
            .args(["demo", "--config", "config/demo.toml"])
            .current_dir(clone.path())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap(),
    );
    // Ready when both demo pools are healthy (the README's canary needs green's health).
    let started = Instant::now();
    loop {
        let status = Command::new(bin)
            .args(["pools", "--config", "config/demo.toml", "status"])
            .current_dir(clone.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&status.stdout);
        if status.status.success() && text.matches(" 1/1 ").count() == 2 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the demo did not come up: {text}{}",
            std::fs::read_to_string(clone.path().join("demo.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let mut ran = 0;
    for (line, command, expected) in &commands {
        if let Some((_, why)) = STANDS_FOR.iter().find(|(c, _)| command.starts_with(c)) {
            eprintln!("README.md:{line}: not run ({why}): {command}");
            continue;
        }
        let out = Command::new("sh")
            .args(["-c", command])
            .current_dir(clone.path())
            .env("PATH", &path)
            .env_remove("CROSSFADE_TOKEN")
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap();
        let code = out.status.code().unwrap_or(-1);
        assert_eq!(
            code,
            *expected,
            "README.md:{line}: `{command}` exited {code}, the README says {expected}\n\
             stdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ran += 1;
    }
    assert_eq!(
        ran,
        commands.len() - STANDS_FOR.len(),
        "each line this test stands for appears once"
    );
}

#[test]
fn exit_codes_are_read_from_the_trailing_comment() {
    let readme = "text\n```sh\nfoo   # exits 1: why\nbar \\\n  baz # fine\n# a comment\n```\n\
                  ```toml\nnot = \"run\"\n```\n";
    assert_eq!(
        commands(readme),
        [
            (3, "foo   # exits 1: why".to_string(), 1),
            (5, "bar baz # fine".to_string(), 0)
        ]
    );
}
