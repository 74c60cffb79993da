//! The host reader against file sets: `v1-cgroupfs` recorded on this project's Docker 20.10 host
//! (cgroup v1, cgroupfs driver) from a container spinning one CPU, one second apart (`a`, `b`),
//! with the engine's own stats answer of the same moment; `v1-systemd` and `v2` hold the same
//! counters in the layouts of the systemd driver on cgroup v1 and of cgroup v2, in the kernel's
//! formats.

use std::path::Path;

use super::recorded::{ID, PID, copy_tree, set};
use super::*;
use crate::stats::RawStats;

/// `MemTotal` of the recording host, in bytes.
const MACHINE_MEMORY: u64 = 24_683_584 * 1024;

fn host(dir: &Path) -> HostFiles {
    HostFiles::at(dir).expect("meminfo")
}

/// A reading of the recorded container in `layout`'s snapshot `snap`.
fn reading(layout: &str, snap: &str) -> Reading {
    let h = host(&set(layout).join(snap));
    let located = h.locate(PID, ID, false).expect("located");
    h.read(&located, h.system().expect("system")).expect("read")
}

/// The figures of snapshot `b` over the interval since `a`.
fn stats(layout: &str) -> RawStats {
    let a = reading(layout, "a");
    RawStats {
        read_at: None,
        ..reading(layout, "b").to_raw(Some(a.cpu_point()))
    }
}

#[test]
fn the_system_cpu_time_is_the_engines_sum_of_seven_fields() {
    let system = host(&set("v1-cgroupfs/a")).system().expect("system");
    // cpu  3250 0 2573 64509 605 0 338 4178 0 0: user to softirq, not steal.
    assert_eq!(system.total_ns, 71_275 * 10_000_000);
    assert_eq!(system.online_cpus, 2);
    assert_eq!(system.steal_ns, 4_178 * 10_000_000);
    // A short interval from the wall clock: two CPUs, less the share stolen since boot.
    let second = system.over(std::time::Duration::from_secs(1));
    let expected = 2e9 * 71_275.0 / (71_275.0 + 4_178.0);
    assert!((second as f64 - expected).abs() < 1.0, "{second}");
}

#[test]
fn each_layout_is_found() {
    for (layout, version, cpu) in [
        (
            "v1-cgroupfs",
            CgroupVersion::V1,
            format!("sys/fs/cgroup/cpuacct/docker/{ID}/cpuacct.usage"),
        ),
        (
            "v1-systemd",
            CgroupVersion::V1,
            format!("sys/fs/cgroup/cpu,cpuacct/system.slice/docker-{ID}.scope/cpuacct.usage"),
        ),
        (
            "v2",
            CgroupVersion::V2,
            format!("sys/fs/cgroup/system.slice/docker-{ID}.scope/cpu.stat"),
        ),
    ] {
        let root = set(layout).join("a");
        let located = host(&root).locate(PID, ID, false).expect(layout);
        assert_eq!(located.version, version, "{layout}");
        assert_eq!(located.cpu_path(), root.join(cpu), "{layout}");
    }
}

#[test]
fn figures_agree_in_every_layout_and_with_the_engines_meaning() {
    // The v1 cgroupfs recording: 1076747770 ns of the container's CPU over 215 ticks of the
    // host's two CPUs is 100.16 %; the engine's answer a second later said 100.78 %.
    let v1 = stats("v1-cgroupfs");
    assert_eq!(v1.cpu_percent(), Some(100.16));
    assert_eq!(v1.memory_used(), 18_100_224 - 737_280);
    assert_eq!(v1.memory_limit, 64 * 1024 * 1024);
    assert_eq!((v1.network_rx, v1.network_tx), (736, 0));
    assert_eq!(v1.online_cpus, 2);
    assert_eq!(v1.source, SampleSource::Cgroup);

    let engine: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(set("v1-cgroupfs/engine-stats.json")).expect("engine stats"),
    )
    .expect("JSON");
    let memory = &engine["memory_stats"];
    let engine_used = memory["usage"].as_u64().expect("a number")
        - memory["stats"]["total_inactive_file"]
            .as_u64()
            .expect("a number");
    assert_eq!(
        v1.memory_used(),
        engine_used,
        "memory as docker stats shows it"
    );
    assert_eq!(v1.memory_limit, memory["limit"].as_u64().expect("a number"));
    assert_eq!(
        v1.network_rx,
        engine["networks"]["eth0"]["rx_bytes"]
            .as_u64()
            .expect("a number")
    );
    let (cpu, precpu) = (&engine["cpu_stats"], &engine["precpu_stats"]);
    let delta = |k: &str| {
        cpu[k]
            .as_u64()
            .unwrap_or_else(|| cpu["cpu_usage"][k].as_u64().expect("a number"))
            - precpu[k]
                .as_u64()
                .unwrap_or_else(|| precpu["cpu_usage"][k].as_u64().expect("a number"))
    };
    let engine_cpu = delta("total_usage") as f64 / delta("system_cpu_usage") as f64 * 2.0 * 100.0;
    assert!(
        (v1.cpu_percent().expect("a CPU %") - engine_cpu).abs() < 1.0,
        "{engine_cpu}"
    );

    // The same counters under the systemd driver, and under cgroup v2 (no limit of its own: the
    // host's memory, as the engine reports it).
    assert_eq!(stats("v1-systemd"), v1);
    let v2 = stats("v2");
    assert_eq!(v2.cpu_percent(), Some(100.16));
    assert_eq!(v2.memory_used(), v1.memory_used());
    assert_eq!(v2.memory_limit, MACHINE_MEMORY);
    assert_eq!((v2.network_rx, v2.network_tx), (736, 0));
}

#[test]
fn a_container_stopped_before_a_second_reading_has_figures_but_no_cpu_percent() {
    let only = reading("v1-cgroupfs", "a").to_raw(None);
    assert_eq!(only.cpu_percent(), None);
    assert_eq!(only.memory_used(), 18_100_224 - 737_280);
    assert!(!only.is_empty());
}

#[test]
fn counters_that_reset_give_no_cpu_percent() {
    // `b` then `a`: the container's counter went back (a new cgroup of the same name).
    let b = reading("v1-cgroupfs", "b");
    let backwards = reading("v1-cgroupfs", "a").to_raw(Some(b.cpu_point()));
    assert_eq!(backwards.cpu_percent(), None);
    // The same reading twice: no system time between them.
    let a = reading("v1-cgroupfs", "a");
    assert_eq!(a.to_raw(Some(a.cpu_point())).cpu_percent(), None);
}

/// A copy of `layout`'s snapshot `a` to change.
fn copy(layout: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_tree(&set(layout).join("a"), dir.path());
    dir
}

#[test]
fn a_process_of_another_container_or_namespace_is_not_read() {
    let dir = copy("v1-cgroupfs");
    let h = host(dir.path());
    let other = "f".repeat(64);
    assert!(matches!(
        h.locate(PID, &other, false),
        Err(Unusable::NotTheContainer { .. })
    ));
    assert!(matches!(
        h.locate(PID + 1, ID, false),
        Err(Unusable::Hidden { .. })
    ));
    assert!(matches!(h.locate(0, ID, false), Err(Unusable::NoPid)));
    // A cgroup outside this host's view of the hierarchy (another cgroup namespace).
    std::fs::write(
        dir.path().join(format!("proc/{PID}/cgroup")),
        format!("4:memory:/../docker/{ID}\n2:cpuacct:/../docker/{ID}\n"),
    )
    .expect("test file");
    assert!(matches!(
        h.locate(PID, ID, false),
        Err(Unusable::NotMounted { .. })
    ));
}

#[test]
fn unreadable_or_malformed_files_are_errors_never_zeros() {
    let dir = copy("v1-cgroupfs");
    let h = host(dir.path());
    let located = h.locate(PID, ID, false).expect("located");
    let system = h.system().expect("system");
    let memory = dir.path().join(format!("sys/fs/cgroup/memory/docker/{ID}"));
    std::fs::write(memory.join("memory.usage_in_bytes"), "").expect("test file");
    assert!(matches!(
        h.read(&located, system),
        Err(ReadError::Malformed { .. })
    ));
    std::fs::write(memory.join("memory.usage_in_bytes"), "18100224\n").expect("test file");
    std::fs::write(memory.join("memory.stat"), "cache\n").expect("test file");
    assert!(matches!(
        h.read(&located, system),
        Err(ReadError::Malformed { .. })
    ));
    // A directory where a file should be cannot be read: an error, not "gone".
    std::fs::remove_file(memory.join("memory.stat")).expect("test file");
    std::fs::create_dir(memory.join("memory.stat")).expect("test file");
    let located = h.locate(PID, ID, false).expect("located");
    assert!(matches!(
        h.read(&located, system),
        Err(ReadError::Unreadable { .. })
    ));
}

#[test]
fn a_cgroup_or_process_that_is_gone_means_the_container_stopped() {
    let dir = copy("v1-cgroupfs");
    let h = host(dir.path());
    let located = h.locate(PID, ID, false).expect("located");
    let system = h.system().expect("system");
    std::fs::remove_dir_all(dir.path().join(format!("proc/{PID}"))).expect("test file");
    assert!(matches!(h.read(&located, system), Err(ReadError::Gone)));
    std::fs::remove_dir_all(
        dir.path()
            .join(format!("sys/fs/cgroup/cpuacct/docker/{ID}")),
    )
    .expect("test file");
    assert!(matches!(
        h.locate(PID, ID, false),
        Err(Unusable::Hidden { .. })
    ));
    // A cgroup file read once its cgroup is removed fails with ENODEV; a process's entry read as
    // it ends, with ESRCH.
    for errno in [
        rustix::io::Errno::NODEV,
        rustix::io::Errno::SRCH,
        rustix::io::Errno::NOENT,
    ] {
        let e = std::io::Error::from_raw_os_error(errno.raw_os_error());
        assert!(matches!(ReadError::io(Path::new("x"), e), ReadError::Gone));
    }
    let denied = std::io::Error::from_raw_os_error(rustix::io::Errno::ACCESS.raw_os_error());
    assert!(matches!(
        ReadError::io(Path::new("x"), denied),
        ReadError::Unreadable { .. }
    ));
}

#[test]
fn a_container_on_the_hosts_network_has_no_counters_of_its_own() {
    let h = host(&set("v1-cgroupfs/a"));
    let located = h.locate(PID, ID, true).expect("located");
    let r = h
        .read(&located, h.system().expect("test file"))
        .expect("read");
    assert_eq!((r.network_rx, r.network_tx), (0, 0));
}

#[test]
fn a_pulse_is_the_cpu_time_and_memory_usage_of_a_reading_and_ends_with_the_process() {
    for layout in ["v1-cgroupfs", "v1-systemd", "v2"] {
        let dir = copy(layout);
        let h = host(dir.path());
        let located = h.locate(PID, ID, false).expect(layout);
        let full = h.read(&located, h.system().expect("system")).expect(layout);
        assert_eq!(h.pulse(&located).expect(layout), full.pulse(), "{layout}");
        let later = full.advanced(Utc::now(), full.system, full.pulse());
        assert_eq!(later.network_rx, full.network_rx, "{layout}");
        assert_eq!(later.memory_inactive_file, full.memory_inactive_file);
        // The process ended: its cgroup may still be there a moment, its figures no one's.
        std::fs::remove_dir_all(dir.path().join(format!("proc/{PID}"))).expect("test file");
        assert!(
            matches!(h.pulse(&located), Err(ReadError::Gone)),
            "{layout}"
        );
    }
}
