//! A stand-in for systemd-logind on a private D-Bus daemon: it owns `org.freedesktop.login1`,
//! hands out delay locks as file descriptors (pipes whose read end it keeps, so that it sees each
//! lock's release), emits `PrepareForShutdown`, and reports `InhibitDelayMaxUSec`.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One lock handed out: what it inhibits, its mode, and when it was released (every copy of it
/// closed).
#[derive(Debug, Clone)]
pub struct Lock {
    pub what: String,
    pub mode: String,
    /// The pipe, as `/proc/<pid>/fd/<n>` names it (`pipe:[inode]`): the holder's descriptor.
    pub pipe: String,
    pub released: Option<Instant>,
}

#[derive(Debug, Default)]
struct State {
    locks: Vec<Lock>,
    preparing: bool,
}

struct Manager {
    state: Arc<Mutex<State>>,
    delay_max_usec: u64,
}

#[zbus::interface(name = "org.freedesktop.login1.Manager")]
impl Manager {
    async fn inhibit(
        &self,
        what: String,
        _who: String,
        _why: String,
        mode: String,
    ) -> zbus::fdo::Result<zbus::zvariant::OwnedFd> {
        let (mut reader, writer) =
            std::io::pipe().map_err(|e| zbus::fdo::Error::Failed(e.to_string()))?;
        let pipe = std::fs::read_link(format!("/proc/self/fd/{}", reader.as_raw_fd()))
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let index = {
            let mut state = self.state.lock().unwrap();
            state.locks.push(Lock {
                what,
                mode,
                pipe,
                released: None,
            });
            state.locks.len() - 1
        };
        let state = self.state.clone();
        // The lock holds until every copy of the write end is closed: then the read sees EOF.
        std::thread::spawn(move || {
            let mut buf = [0u8; 16];
            while matches!(reader.read(&mut buf), Ok(n) if n > 0) {}
            state.lock().unwrap().locks[index].released = Some(Instant::now());
        });
        Ok(std::os::fd::OwnedFd::from(writer).into())
    }

    #[zbus(property, name = "InhibitDelayMaxUSec")]
    fn inhibit_delay_max_usec(&self) -> u64 {
        self.delay_max_usec
    }

    #[zbus(property)]
    fn preparing_for_shutdown(&self) -> bool {
        self.state.lock().unwrap().preparing
    }

    #[zbus(signal)]
    async fn prepare_for_shutdown(
        emitter: &zbus::object_server::SignalEmitter<'_>,
        start: bool,
    ) -> zbus::Result<()>;
}

/// A private bus with the fake logind on it; the bus daemon is stopped (by its pid) when dropped.
pub struct FakeLogind {
    /// `DBUS_SYSTEM_BUS_ADDRESS` for the agent.
    pub address: String,
    state: Arc<Mutex<State>>,
    connection: zbus::Connection,
    daemon: Child,
    _dir: tempfile::TempDir,
}

const PATH: &str = "/org/freedesktop/login1";

impl FakeLogind {
    /// Starts `dbus-daemon` on a socket of its own, and the fake on it, with logind's cap at
    /// `delay_max`.
    pub async fn start(delay_max: Duration) -> FakeLogind {
        let dir = tempfile::tempdir().unwrap();
        let socket: PathBuf = dir.path().join("system_bus_socket");
        let config = dir.path().join("bus.conf");
        std::fs::write(
            &config,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"#,
                socket.display()
            ),
        )
        .unwrap();
        let daemon = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .arg("--nofork")
            .stdout(Stdio::null())
            .spawn()
            .expect(
                "dbus-daemon (Debian's dbus-daemon package) must be installed for the logind tests",
            );
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "dbus-daemon did not listen");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let address = format!("unix:path={}", socket.display());
        let state = Arc::new(Mutex::new(State::default()));
        let manager = Manager {
            state: state.clone(),
            delay_max_usec: u64::try_from(delay_max.as_micros()).unwrap(),
        };
        let connection = zbus::connection::Builder::address(address.as_str())
            .unwrap()
            .name("org.freedesktop.login1")
            .unwrap()
            .serve_at(PATH, manager)
            .unwrap()
            .build()
            .await
            .expect("the fake logind on the private bus");
        FakeLogind {
            address,
            state,
            connection,
            daemon,
            _dir: dir,
        }
    }

    /// The locks handed out so far.
    pub fn locks(&self) -> Vec<Lock> {
        self.state.lock().unwrap().locks.clone()
    }

    /// The locks held at this moment.
    pub fn held(&self) -> Vec<Lock> {
        self.locks()
            .into_iter()
            .filter(|l| l.released.is_none())
            .collect()
    }

    /// Waits (up to `within`) until `n` locks are held.
    pub async fn wait_held(&self, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.held().len() != n {
            assert!(
                Instant::now() < deadline,
                "{n} locks never held: {:?}",
                self.locks()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The node has booted again: no shutdown is being prepared.
    pub fn rebooted(&self) {
        self.state.lock().unwrap().preparing = false;
    }

    /// Emits `PrepareForShutdown(start)`, as logind does when a shutdown begins (or is cancelled).
    pub async fn prepare_for_shutdown(&self, start: bool) {
        self.state.lock().unwrap().preparing = start;
        let iface = self
            .connection
            .object_server()
            .interface::<_, Manager>(PATH)
            .await
            .unwrap();
        Manager::prepare_for_shutdown(iface.signal_emitter(), start)
            .await
            .unwrap();
    }
}

impl Drop for FakeLogind {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}
