//! The Debian package: built with `cargo deb`, its contents and conffiles checked, installed with
//! `dpkg -i`, its unit verified, the configuration checked as the service user once a tokens file
//! exists, upgraded with an edited configuration and a store in place, and purged.
//!
//! These tests install a package on this machine, so they run only where that is allowed: in CI
//! (`CI=true`) or when `NODE_AGENT_PACKAGE_TESTS=1` says so. Elsewhere they say loudly that they
//! did not run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const PACKAGE: &str = "node-agent";

fn allowed() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
        || std::env::var("NODE_AGENT_PACKAGE_TESTS").is_ok_and(|v| v == "1")
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"))
}

fn ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {}: {}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Builds the package of the test build's binary, as version `version`, into `dir`.
fn build(dir: &Path, version: &str) -> PathBuf {
    let out = dir.join(format!("{PACKAGE}_{version}.deb"));
    let built = Command::new(env!("CARGO"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "deb",
            "--no-build",
            "--profile",
            "dev",
            "--deb-version",
            version,
            "--output",
        ])
        .arg(&out)
        .output()
        .expect("cargo");
    assert!(
        built.status.success(),
        "cargo deb failed (install it with `cargo install cargo-deb --locked`): {}",
        String::from_utf8_lossy(&built.stderr)
    );
    out
}

/// Purges the package and removes what a purge leaves, whatever happened in the test.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = run("dpkg", &["--purge", PACKAGE]);
        let _ = std::fs::remove_dir_all("/var/lib/node-agent");
        let _ = std::fs::remove_dir_all("/etc/node-agent");
        let _ = run("deluser", &["--system", "--quiet", PACKAGE]);
    }
}

#[test]
fn the_debian_package_installs_upgrades_and_purges() {
    if !allowed() {
        eprintln!(
            "NOT RUN: the package test installs node-agent on this machine; set CI=true or \
             NODE_AGENT_PACKAGE_TESTS=1 to run it"
        );
        return;
    }
    assert!(
        !run("dpkg", &["-s", PACKAGE]).status.success(),
        "node-agent is installed on this machine already: the test would replace it"
    );
    // Built first: the dev build of the test run is the package's binary.
    assert!(Path::new(env!("CARGO_BIN_EXE_node-agent")).is_file());
    let dir = tempfile::tempdir().unwrap();
    let first = build(dir.path(), "0.1.0-1");
    let first = first.to_str().unwrap();

    // Contents and conffiles.
    let contents = ok("dpkg-deb", &["--contents", first]);
    for path in [
        "./usr/bin/node-agent",
        "./lib/systemd/system/node-agent.service",
        "./etc/node-agent/node-agent.toml",
        "./usr/share/doc/node-agent/README.md",
        "./usr/share/doc/node-agent/node-agent.toml.example",
    ] {
        assert!(
            contents.lines().any(|l| l.ends_with(path)),
            "{path} missing from the package:\n{contents}"
        );
    }
    let conffiles = ok("dpkg-deb", &["--info", first, "conffiles"]);
    assert_eq!(conffiles.trim(), "/etc/node-agent/node-agent.toml");
    let control = ok("dpkg-deb", &["--field", first, "Depends"]);
    assert!(control.contains("adduser"), "{control}");

    // Installed: the user, the configuration's owner and modes, the unit.
    let guard = Installed;
    let said = ok("dpkg", &["-i", first]);
    assert!(
        said.contains("create /etc/node-agent/tokens.toml"),
        "{said}"
    );
    ok("getent", &["passwd", PACKAGE]);
    ok("getent", &["group", PACKAGE]);
    let stat = ok(
        "stat",
        &[
            "-c",
            "%U:%G %a",
            "/etc/node-agent",
            "/etc/node-agent/node-agent.toml",
        ],
    );
    assert_eq!(
        stat.lines().collect::<Vec<_>>(),
        ["root:node-agent 750", "root:node-agent 640"]
    );
    let verify = ok(
        "systemd-analyze",
        &["verify", "/lib/systemd/system/node-agent.service"],
    );
    assert!(
        !verify.contains("node-agent.service:"),
        "systemd-analyze verify warns about the unit:\n{verify}"
    );
    assert!(
        !Path::new("/etc/node-agent/tokens.toml").exists(),
        "the package made tokens"
    );

    // A tokens file made as the README says; the configuration checks as the service user.
    let made = ok(
        "/usr/bin/node-agent",
        &[
            "token",
            "new",
            "--name",
            "control-plane",
            "--role",
            "operator",
        ],
    );
    let entry: String = made
        .lines()
        .skip_while(|l| !l.starts_with('#'))
        .skip(1)
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(entry.contains("[[token]]"), "{made}");
    ok(
        "install",
        &[
            "-o",
            "root",
            "-g",
            PACKAGE,
            "-m",
            "0640",
            "/dev/null",
            "/etc/node-agent/tokens.toml",
        ],
    );
    std::fs::write("/etc/node-agent/tokens.toml", &entry).unwrap();
    let checked = ok(
        "runuser",
        &[
            "-u",
            PACKAGE,
            "--",
            "/usr/bin/node-agent",
            "check-config",
            "--config",
            "/etc/node-agent/node-agent.toml",
        ],
    );
    assert!(checked.contains("valid"), "{checked}");

    // An upgrade keeps an edited configuration and the state.
    let edited = std::fs::read_to_string("/etc/node-agent/node-agent.toml").unwrap()
        + "\n# edited by the operator\n";
    std::fs::write("/etc/node-agent/node-agent.toml", &edited).unwrap();
    std::fs::create_dir_all("/var/lib/node-agent").unwrap();
    std::fs::write("/var/lib/node-agent/node-agent.db", "the store").unwrap();
    let second = build(dir.path(), "0.1.0-2");
    ok("dpkg", &["-i", "--force-confold", second.to_str().unwrap()]);
    let version = ok("dpkg-query", &["-W", "-f", "${Version}", PACKAGE]);
    assert_eq!(version.trim(), "0.1.0-2");
    assert_eq!(
        std::fs::read_to_string("/etc/node-agent/node-agent.toml").unwrap(),
        edited
    );
    assert_eq!(
        std::fs::read_to_string("/var/lib/node-agent/node-agent.db").unwrap(),
        "the store"
    );

    // A purge removes what the package shipped and says what it leaves.
    let purged = ok("dpkg", &["--purge", PACKAGE]);
    assert!(purged.contains("left in place"), "{purged}");
    assert!(purged.contains("/var/lib/node-agent"), "{purged}");
    for gone in [
        "/usr/bin/node-agent",
        "/lib/systemd/system/node-agent.service",
        "/etc/node-agent/node-agent.toml",
    ] {
        assert!(!Path::new(gone).exists(), "{gone} is left after the purge");
    }
    for kept in [
        "/var/lib/node-agent/node-agent.db",
        "/etc/node-agent/tokens.toml",
    ] {
        assert!(Path::new(kept).exists(), "{kept} was removed by the purge");
    }
    drop(guard);
}
