//! The shipped systemd unit: `systemd-analyze verify` accepts it without warnings, `systemd-analyze
//! security` rates its exposure 2.0 or lower, and it keeps what the daemon depends on.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const UNIT: &str = "node-agent.service";
const BINARY: &str = "/usr/bin/node-agent";
const MAX_EXPOSURE: f64 = 2.0;

fn unit_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("systemd")
        .join(UNIT)
}

fn unit_text() -> String {
    std::fs::read_to_string(unit_path()).expect("read systemd/node-agent.service")
}

/// Runs `systemd-analyze ARGS`; fails (never skips) when it is not installed.
fn systemd_analyze(args: &[&str]) -> Output {
    match Command::new("systemd-analyze")
        .args(args)
        .env("SYSTEMD_COLORS", "0")
        .env("SYSTEMD_PAGER", "")
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "systemd-analyze is not installed; these tests need it: install Debian's `systemd` \
             package (apt-get install systemd)"
        ),
        Err(e) => panic!("could not run systemd-analyze: {e}"),
    }
}

fn show(out: &Output) -> String {
    format!(
        "exit status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `(section, key, value)` of every setting of the unit, in order; comments left out.
fn settings(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
        } else if let Some((key, value)) = line.split_once('=') {
            out.push((
                section.clone(),
                key.trim().to_owned(),
                value.trim().to_owned(),
            ));
        }
    }
    out
}

/// The values of `key` in the `[Service]` section.
fn service_values(text: &str, key: &str) -> Vec<String> {
    settings(text)
        .into_iter()
        .filter(|(section, k, _)| section == "Service" && k == key)
        .map(|(_, _, v)| v)
        .collect()
}

/// The absolute programs the unit's `Exec*=` lines run (prefixes such as `-` or `+` removed).
fn exec_programs(text: &str) -> Vec<String> {
    let mut programs: Vec<String> = settings(text)
        .into_iter()
        .filter(|(section, key, _)| section == "Service" && key.starts_with("Exec"))
        .filter_map(|(_, _, value)| {
            let first = value.split_whitespace().next()?;
            Some(
                first
                    .trim_start_matches(['-', '@', ':', '+', '!'])
                    .to_owned(),
            )
        })
        .collect();
    programs.sort();
    programs.dedup();
    programs
}

/// The host's system unit directory, copied into the throwaway root so that the unit's
/// dependencies (multi-user.target, network-online.target, ...) resolve.
fn host_unit_dir() -> PathBuf {
    ["/usr/lib/systemd/system", "/lib/systemd/system"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_dir())
        .expect(
            "no /usr/lib/systemd/system on this host; install Debian's `systemd` package \
             (apt-get install systemd)",
        )
}

#[test]
fn systemd_analyze_verify_accepts_the_unit_without_warnings() {
    let text = unit_text();
    // Fail at once, with the install hint, when systemd-analyze is missing.
    systemd_analyze(&["--version"]);
    let root = tempfile::tempdir().expect("temporary root");
    let root_path = root.path();

    // The system units, symlinks kept (a symlinked directory makes systemd-analyze complain
    // about every alias in it).
    let units = root_path.join("usr/lib/systemd");
    std::fs::create_dir_all(&units).unwrap();
    let cp = Command::new("cp")
        .arg("-a")
        .arg(host_unit_dir())
        .arg(units.join("system"))
        .output()
        .expect("run cp");
    assert!(
        cp.status.success(),
        "copying the system units failed\n{}",
        show(&cp)
    );

    // Every program the unit runs must exist in the root: the agent built by cargo, the host's
    // copy of anything else (/bin/kill).
    let programs = exec_programs(&text);
    assert!(
        programs.iter().any(|p| p == BINARY),
        "the unit does not run {BINARY}: {programs:?}"
    );
    for program in &programs {
        assert!(program.starts_with('/'), "{program}: not an absolute path");
        let source = if program == BINARY {
            PathBuf::from(env!("CARGO_BIN_EXE_node-agent"))
        } else {
            PathBuf::from(program)
        };
        assert!(
            source.is_file(),
            "{}: missing on this host",
            source.display()
        );
        let target = root_path.join(program.trim_start_matches('/'));
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(&source, &target)
            .unwrap_or_else(|e| panic!("copy {} to the root: {e}", source.display()));
    }

    let system = root_path.join("etc/systemd/system");
    std::fs::create_dir_all(&system).unwrap();
    std::fs::write(system.join(UNIT), &text).unwrap();

    let root_arg = format!("--root={}", root_path.display());
    let out = systemd_analyze(&["verify", &root_arg, UNIT]);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed\n{}",
        show(&out)
    );
    let complaints: Vec<String> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .chain(String::from_utf8_lossy(&out.stdout).lines())
        .filter(|line| line.contains("node-agent"))
        .map(str::to_owned)
        .collect();
    assert!(
        complaints.is_empty(),
        "systemd-analyze verify warns about the unit: {complaints:#?}\n{}",
        show(&out)
    );
}

#[test]
fn systemd_analyze_security_rates_the_unit_at_most_2_0() {
    let path = unit_path();
    let out = systemd_analyze(&[
        "security",
        "--offline=true",
        "--no-pager",
        path.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "systemd-analyze security failed\n{}",
        show(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let marker = format!("Overall exposure level for {UNIT}:");
    let exposure: f64 = stdout
        .lines()
        .find_map(|line| line.split_once(marker.as_str()))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no \"{marker} X.Y\" line\n{}", show(&out)));
    assert!(
        exposure <= MAX_EXPOSURE,
        "exposure level {exposure:.1} is above {MAX_EXPOSURE:.1}\n{}",
        show(&out)
    );
}

#[test]
fn the_unit_keeps_what_the_daemon_depends_on() {
    let text = unit_text();
    let one = |key: &str| -> String {
        let values = service_values(&text, key);
        assert_eq!(
            values.len(),
            1,
            "[Service] {key}= should be set once: {values:?}"
        );
        values[0].clone()
    };

    // The readiness, reload and watchdog protocol the agent speaks over $NOTIFY_SOCKET.
    assert_eq!(one("Type"), "notify");
    assert_eq!(one("NotifyAccess"), "main");
    assert!(!one("WatchdogSec").is_empty(), "WatchdogSec= is empty");
    let reload = one("ExecReload");
    assert!(
        reload.contains("-HUP") && reload.contains("$MAINPID"),
        "ExecReload= must send SIGHUP to the main process: {reload}"
    );

    // Identity: its own user, and the docker group for /var/run/docker.sock.
    assert_eq!(one("User"), "node-agent");
    let groups = service_values(&text, "SupplementaryGroups").join(" ");
    assert!(
        groups.split_whitespace().any(|g| g == "docker"),
        "SupplementaryGroups= must hold docker: {groups:?}"
    );
    assert!(
        service_values(&text, "PrivateUsers").is_empty(),
        "PrivateUsers= would map the docker group away"
    );

    // /var/lib/node-agent (SQLite store), /run/node-agent (Unix socket), /etc/node-agent.
    assert_eq!(one("StateDirectory"), "node-agent");
    assert_eq!(one("RuntimeDirectory"), "node-agent");
    assert_eq!(one("ConfigurationDirectory"), "node-agent");

    // A bad configuration (exit 78) is not restarted; the configuration is checked first.
    let prevent = one("RestartPreventExitStatus");
    assert!(
        prevent.split_whitespace().any(|s| s == "78"),
        "RestartPreventExitStatus= must hold 78: {prevent:?}"
    );
    assert!(
        one("ExecStartPre").contains("check-config"),
        "ExecStartPre= must run check-config"
    );

    // The host figures read /proc/meminfo, /proc/loadavg and /proc/stat, which ProcSubset=pid hides.
    assert!(
        service_values(&text, "ProcSubset")
            .iter()
            .all(|v| v != "pid"),
        "ProcSubset=pid hides /proc/meminfo and /proc/loadavg"
    );
    // Final samples read each container's /proc/<pid>/cgroup and /proc/<pid>/net/dev, which
    // ProtectProc=invisible or noaccess hide (the container's processes are not the agent's user's).
    assert!(
        service_values(&text, "ProtectProc")
            .iter()
            .all(|v| v == "default"),
        "ProtectProc= other than default hides the containers' processes"
    );
}
