//! The Debian package: built with `cargo deb`, its contents and conffiles checked, installed with
//! `dpkg -i`, its unit verified, its placeholder node refused and the configuration checked as the
//! service user once the node is set and a tokens file exists, upgraded with an edited
//! configuration and a store in place, and purged.
//!
//! These tests install a package on this machine, so they run only where that is allowed: in CI
//! (`CI=true`) or when `NODE_AGENT_PACKAGE_TESTS=1` says so. Elsewhere they say loudly that they
//! did not run. The machine may have had the package before: a purge leaves the operator's tokens
//! file, the store and the `node-agent` user and group. The test expects only the messages due on
//! the machine as it finds it, leaves what it found untouched, and removes only what it made.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const PACKAGE: &str = "node-agent";

/// The directories the package and the operator put files in.
const PLACES: [&str; 2] = ["/etc/node-agent", "/var/lib/node-agent"];

const TOKENS: &str = "/etc/node-agent/tokens.toml";
const CONFIG: &str = "/etc/node-agent/node-agent.toml";

/// This node, as the test sets it in the installed configuration.
const NODE_ID: &str = "60c72b2f9b1e8d001c8e4f3c";
const NODE_NAME: &str = "PACKAGE-TEST";

fn allowed() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
        || std::env::var("NODE_AGENT_PACKAGE_TESTS").is_ok_and(|v| v == "1")
}

/// Runs `program` to its end, non-interactively.
pub(crate) fn run(program: &str, args: &[&str]) -> Output {
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
pub(crate) fn build(dir: &Path, version: &str) -> PathBuf {
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

/// Whether `getent DATABASE node-agent` finds the user (`passwd`) or group (`group`).
fn known(database: &str) -> bool {
    run("getent", &[database, PACKAGE]).status.success()
}

/// Every path under [`PLACES`], the directories themselves included, with a file's contents (a
/// directory's are `None`).
fn files() -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    fn walk(path: &Path, into: &mut BTreeMap<PathBuf, Option<Vec<u8>>>) {
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            return;
        };
        if meta.is_dir() {
            into.insert(path.to_owned(), None);
            for entry in std::fs::read_dir(path).unwrap() {
                walk(&entry.unwrap().path(), into);
            }
        } else {
            into.insert(
                path.to_owned(),
                Some(std::fs::read(path).unwrap_or_default()),
            );
        }
    }
    let mut found = BTreeMap::new();
    for place in PLACES {
        walk(Path::new(place), &mut found);
    }
    found
}

/// What the machine held before the test: the package's user and group, and the files under
/// [`PLACES`].
#[derive(Debug)]
struct Before {
    user: bool,
    group: bool,
    files: BTreeMap<PathBuf, Option<Vec<u8>>>,
}

impl Before {
    fn take() -> Before {
        Before {
            user: known("passwd"),
            group: known("group"),
            files: files(),
        }
    }

    fn had(&self, path: &str) -> bool {
        self.files.contains_key(Path::new(path))
    }

    /// Fails unless every file found before is still there, with the same contents.
    fn assert_untouched(&self) {
        let now = files();
        for (path, contents) in &self.files {
            match (contents, now.get(path)) {
                (None, Some(None)) => {}
                (Some(before), Some(Some(after))) if before == after => {}
                _ => panic!(
                    "{} was there before the test, and was changed",
                    path.display()
                ),
            }
        }
    }
}

/// Purges the package and removes what the test made, and only that, whatever happened in the
/// test.
struct Installed {
    before: Before,
}

impl Installed {
    /// Leaves the machine as the test found it: the package purged, the files and directories the
    /// test (or the package) made removed, the user and group removed if they were not there.
    fn clean_up(&self) {
        let _ = run("dpkg", &["--purge", PACKAGE]);
        // In reverse order, a directory's entries come before it, so a directory the test made is
        // empty when its turn comes; one found before keeps what it held.
        for path in files().keys().rev() {
            if self.before.files.contains_key(path) {
                continue;
            }
            let removed = if path.is_dir() {
                std::fs::remove_dir(path)
            } else {
                std::fs::remove_file(path)
            };
            if let Err(e) = removed {
                eprintln!("cannot remove {}: {e}", path.display());
            }
        }
        if !self.before.user && known("passwd") {
            let _ = run("deluser", &["--system", "--quiet", PACKAGE]);
        }
        if !self.before.group && known("group") {
            let _ = run("delgroup", &["--system", "--quiet", PACKAGE]);
        }
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        self.clean_up();
    }
}

/// Replaces the package's placeholder node in the installed configuration, as the install steps
/// of docs/operations.md do.
fn set_node() {
    let text = std::fs::read_to_string(CONFIG).unwrap();
    assert!(text.contains("\"unset-node-id\""), "{text}");
    let text = text
        .replace("\"unset-node-id\"", &format!("\"{NODE_ID}\""))
        .replace("\"unset-node-name\"", &format!("\"{NODE_NAME}\""));
    // Written over the file in place, so that its owner and mode stay the package's.
    std::fs::write(CONFIG, text).unwrap();
}

/// `check-config` of the installed configuration as the service user, with `env`.
fn check_config_as_the_service(env: &[(&str, &str)]) -> Output {
    let mut command = Command::new("runuser");
    command.args([
        "-u",
        PACKAGE,
        "--",
        "/usr/bin/node-agent",
        "check-config",
        "--config",
        CONFIG,
    ]);
    command.envs(env.iter().copied());
    command.output().expect("runuser")
}

/// The operator's kit as installed: the man pages (gzipped), the completions and the alert rules
/// are the repository's own files, where man, the shells and Prometheus look for them; the rules'
/// unit tests pass where they are installed, beside the rules, when `promtool` is here (`.ci/run`
/// installs it).
fn operators_kit_installed() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    for page in [
        "node-agent",
        "node-agent-check-config",
        "node-agent-token",
        "node-agent-token-new",
        "node-agent-token-list",
    ] {
        let installed = format!("/usr/share/man/man1/{page}.1.gz");
        let text = ok("gzip", &["-dc", &installed]);
        let ours = std::fs::read_to_string(repo.join(format!("docs/man/{page}.1"))).unwrap();
        assert_eq!(text, ours, "{installed} is not docs/man/{page}.1");
    }
    for (ours, installed) in [
        (
            "completions/node-agent.bash",
            "/usr/share/bash-completion/completions/node-agent",
        ),
        (
            "completions/node-agent.zsh",
            "/usr/share/zsh/vendor-completions/_node-agent",
        ),
        (
            "completions/node-agent.fish",
            "/usr/share/fish/vendor_completions.d/node-agent.fish",
        ),
        (
            "config/alerts/node-agent.rules.yml",
            "/usr/share/node-agent/alerts/node-agent.rules.yml",
        ),
        (
            "config/alerts/node-agent.rules.test.yml",
            "/usr/share/node-agent/alerts/node-agent.rules.test.yml",
        ),
    ] {
        assert_eq!(
            std::fs::read(installed).unwrap_or_else(|e| panic!("{installed}: {e}")),
            std::fs::read(repo.join(ours)).unwrap(),
            "{installed} is not {ours}"
        );
        let mode = ok("stat", &["-c", "%U:%G %a", installed]);
        assert_eq!(mode.trim(), "root:root 644", "{installed}");
    }
    if Command::new("promtool").arg("--version").output().is_ok() {
        let tested = ok(
            "promtool",
            &[
                "test",
                "rules",
                "/usr/share/node-agent/alerts/node-agent.rules.test.yml",
            ],
        );
        assert!(tested.contains("SUCCESS"), "{tested}");
    } else {
        eprintln!("promtool is not here: the installed alert rules' unit tests were not run");
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
        "node-agent is installed on this machine already (or its configuration is left): the test \
         would replace it"
    );
    let before = Before::take();
    eprintln!(
        "before the test: user {}, group {}, {} paths under {PLACES:?}",
        before.user,
        before.group,
        before.files.len()
    );
    let operator_tokens = before.had(TOKENS);
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
        "./usr/lib/systemd/logind.conf.d/zz-node-agent.conf",
        "./etc/node-agent/node-agent.toml",
        "./usr/share/doc/node-agent/README.md",
        "./usr/share/doc/node-agent/docs/api.md",
        "./usr/share/doc/node-agent/docs/engines.md",
        "./usr/share/doc/node-agent/docs/figures.md",
        "./usr/share/doc/node-agent/docs/operations.md",
        "./usr/share/doc/node-agent/docs/reporting.md",
        "./usr/share/doc/node-agent/docs/security.md",
        "./usr/share/doc/node-agent/node-agent.toml.example",
        "./usr/share/man/man1/node-agent.1.gz",
        "./usr/share/man/man1/node-agent-check-config.1.gz",
        "./usr/share/man/man1/node-agent-token.1.gz",
        "./usr/share/man/man1/node-agent-token-new.1.gz",
        "./usr/share/man/man1/node-agent-token-list.1.gz",
        "./usr/share/bash-completion/completions/node-agent",
        "./usr/share/zsh/vendor-completions/_node-agent",
        "./usr/share/fish/vendor_completions.d/node-agent.fish",
        "./usr/share/node-agent/alerts/node-agent.rules.yml",
        "./usr/share/node-agent/alerts/node-agent.rules.test.yml",
    ] {
        assert!(
            contents.lines().any(|l| l.ends_with(path)),
            "{path} missing from the package:\n{contents}"
        );
    }
    let conffiles = ok("dpkg-deb", &["--info", first, "conffiles"]);
    assert_eq!(conffiles.trim(), CONFIG);
    let control = ok("dpkg-deb", &["--field", first, "Depends"]);
    assert!(control.contains("adduser"), "{control}");
    // Without polkit, logind gives the shutdown delay lock to root only: a dependency, so that
    // the lock can always be taken.
    assert!(control.contains("polkitd | policykit-1"), "{control}");

    // Installed: the user, the configuration's owner and modes, the unit; and the steps still to
    // do, each said only when it is due.
    let guard = Installed { before };
    let said = ok("dpkg", &["-i", first]);
    assert!(
        said.contains("set [node] id and name"),
        "the shipped placeholders need setting: {said}"
    );
    assert_eq!(
        said.contains("create /etc/node-agent/tokens.toml"),
        !operator_tokens,
        "the tokens file is to be made only where there is none (one is there: {operator_tokens}): \
         {said}"
    );
    ok("getent", &["passwd", PACKAGE]);
    ok("getent", &["group", PACKAGE]);
    let stat = ok("stat", &["-c", "%U:%G %a", "/etc/node-agent", CONFIG]);
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
    assert_eq!(
        Path::new(TOKENS).exists(),
        operator_tokens,
        "the package made tokens"
    );
    operators_kit_installed();

    // The placeholders are refused, naming the key to set.
    let refused = check_config_as_the_service(&[]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("node.id"), "{stderr}");
    set_node();

    // A tokens file made as docs/operations.md says; where the operator's is there already, the
    // test's goes beside it, and the check is pointed at that one.
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
    let tokens = if operator_tokens {
        format!("/etc/node-agent/package-test-{}.toml", std::process::id())
    } else {
        TOKENS.to_owned()
    };
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
            &tokens,
        ],
    );
    std::fs::write(&tokens, &entry).unwrap();
    let checked = check_config_as_the_service(&[("NODE_AGENT__AUTH__TOKENS_FILE", &tokens)]);
    let text = String::from_utf8_lossy(&checked.stdout).into_owned()
        + &String::from_utf8_lossy(&checked.stderr);
    assert_eq!(checked.status.code(), Some(0), "{text}");
    assert!(text.contains("valid"), "{text}");

    // An upgrade keeps an edited configuration and the state, and asks for nothing more.
    let edited = std::fs::read_to_string(CONFIG).unwrap() + "\n# edited by the operator\n";
    std::fs::write(CONFIG, &edited).unwrap();
    std::fs::create_dir_all("/var/lib/node-agent").unwrap();
    let store = format!("/var/lib/node-agent/package-test-{}.db", std::process::id());
    std::fs::write(&store, "the store").unwrap();
    let second = build(dir.path(), "0.1.0-2");
    let upgraded = ok("dpkg", &["-i", "--force-confold", second.to_str().unwrap()]);
    assert!(
        !upgraded.contains("set [node] id and name")
            && !upgraded.contains("create /etc/node-agent/tokens.toml"),
        "nothing is left to do: {upgraded}"
    );
    let version = ok("dpkg-query", &["-W", "-f", "${Version}", PACKAGE]);
    assert_eq!(version.trim(), "0.1.0-2");
    assert_eq!(std::fs::read_to_string(CONFIG).unwrap(), edited);
    assert_eq!(std::fs::read_to_string(&store).unwrap(), "the store");

    // A purge removes what the package shipped and says what it leaves.
    let purged = ok("dpkg", &["--purge", PACKAGE]);
    assert!(purged.contains("left in place"), "{purged}");
    assert!(purged.contains("/var/lib/node-agent"), "{purged}");
    for gone in [
        "/usr/bin/node-agent",
        "/lib/systemd/system/node-agent.service",
        CONFIG,
        "/usr/share/node-agent/alerts/node-agent.rules.yml",
        "/usr/share/man/man1/node-agent.1.gz",
        "/usr/share/bash-completion/completions/node-agent",
    ] {
        assert!(!Path::new(gone).exists(), "{gone} is left after the purge");
    }
    for kept in [store.as_str(), tokens.as_str(), TOKENS] {
        assert!(Path::new(kept).exists(), "{kept} was removed by the purge");
    }
    guard.before.assert_untouched();

    // The machine as the test found it.
    guard.clean_up();
    assert_eq!(
        files().keys().collect::<Vec<_>>(),
        guard.before.files.keys().collect::<Vec<_>>(),
        "the files under {PLACES:?} are not those the test found"
    );
    guard.before.assert_untouched();
    assert_eq!(known("passwd"), guard.before.user, "the node-agent user");
    assert_eq!(known("group"), guard.before.group, "the node-agent group");
}
