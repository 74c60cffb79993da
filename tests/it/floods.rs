//! Floods from one loopback address (silent connections, connections idle after one request,
//! pipelined requests never read, tokenless requests with huge paths) against the real agent: an
//! operator on another address is still served within seconds, each connection is closed after its
//! bound, the log stays small, and text from outside never forges a log line.
//!
//! Every flood is bounded in count and time, and only ever targets loopback: the attacking sockets
//! are bound to 127.0.0.2 and up, the operator speaks from 127.0.0.1.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use crate::support;
use crate::support::{AgentOptions, AgentProcess, NODE_ID, app_id};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Connections each attack opens from its one address.
const ATTACKERS: usize = 300;
/// The per-peer cap the agent is given, well below its global `max_connections`.
const PEER_CAP: usize = 32;
/// The agent's global cap: below [`ATTACKERS`], so that without a per-peer cap one address would
/// take every slot.
const GLOBAL_CAP: usize = 128;
/// The agent's header (and idle) and write bounds, in seconds.
const HEADER_SECS: u64 = 2;
const WRITE_SECS: u64 = 2;
/// The longest an operator's request may take while an attack is under way.
const OPERATOR_BOUND: Duration = Duration::from_secs(3);

fn agent_under_attack() -> AgentProcess {
    AgentProcess::start_with(AgentOptions {
        // The default level: a line per answer at debug would make the test about logging.
        log_filter: Some("info".into()),
        max_connections: Some(GLOBAL_CAP),
        header_timeout_secs: Some(HEADER_SECS),
        http_extra: format!(
            "max_connections_per_peer = {PEER_CAP}\nwrite_timeout_secs = {WRITE_SECS}\n"
        ),
        ..Default::default()
    })
}

fn agent_addr(agent: &AgentProcess) -> SocketAddr {
    agent.base.trim_start_matches("http://").parse().unwrap()
}

/// A connection to `to` from loopback address `from` (127.0.0.`from`).
async fn connect_from(from: u8, to: SocketAddr) -> TcpStream {
    connect_with(from, to, None).await
}

/// A connection from 127.0.0.`from`, with a receive buffer of `receive_buffer` bytes if given.
async fn connect_with(from: u8, to: SocketAddr, receive_buffer: Option<u32>) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    if let Some(bytes) = receive_buffer {
        socket.set_recv_buffer_size(bytes).unwrap();
    }
    socket
        .bind(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, from)),
            0,
        ))
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), socket.connect(to))
        .await
        .expect("connect within 10 s")
        .unwrap()
}

/// What a client heard on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Heard {
    /// An answer with this status (its body read too).
    Answer(u16),
    /// The end of the stream, or a reset, before an answer.
    Closed,
    /// Nothing within the time given.
    Nothing,
}

/// Reads one HTTP/1.1 message from `stream` into `got` (which may hold bytes read before): its
/// head, then its body by its content length; answers the head and leaves in `got` only what
/// follows the message. `None` when the stream ends or fails first.
async fn read_message<S>(stream: &mut S, got: &mut Vec<u8>) -> Option<String>
where
    S: tokio::io::AsyncRead + Unpin,
{
    let mut buf = [0u8; 4096];
    let end = loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&got[..end]).into_owned();
    let length: usize = head
        .to_ascii_lowercase()
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while got.len() < end + 4 + length {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    got.drain(..end + 4 + length);
    Some(head)
}

/// Reads one answer's head and body (by its content length), waiting up to `within`.
async fn read_answer(stream: &mut TcpStream, within: Duration) -> Heard {
    let read = async {
        let head = read_message(stream, &mut Vec::new()).await;
        let status = head.and_then(|h| h.split_whitespace().nth(1).and_then(|s| s.parse().ok()));
        status.map_or(Heard::Closed, Heard::Answer)
    };
    tokio::time::timeout(within, read)
        .await
        .unwrap_or(Heard::Nothing)
}

/// Whether the agent has closed `stream` (end of stream or reset), waiting up to `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // An answer that was still on its way: read on.
            Ok(Ok(_)) => {}
        }
    }
}

/// Ten operator requests from 127.0.0.1, each on a new connection, one after the other; their
/// median and worst time, printed under `attack`. Each must be answered 200.
async fn operator_latency(agent: &AgentProcess, attack: &str) -> (Duration, Duration) {
    let to = agent_addr(agent);
    let request = format!(
        "GET /v1/apps HTTP/1.1\r\nHost: agent\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        agent.token
    );
    let mut times = Vec::new();
    for _ in 0..10 {
        let started = Instant::now();
        let mut stream = connect_from(1, to).await;
        stream.write_all(request.as_bytes()).await.unwrap();
        let heard = read_answer(&mut stream, Duration::from_secs(30)).await;
        let took = started.elapsed();
        assert_eq!(
            heard,
            Heard::Answer(200),
            "{attack}: the operator's request after {took:?}"
        );
        times.push(took);
    }
    times.sort();
    let (median, worst) = (times[4] + (times[5] - times[4]) / 2, times[9]);
    println!(
        "FIGURE {attack}: operator's request from another address: median {:.1} ms, worst {:.1} ms of 10",
        median.as_secs_f64() * 1000.0,
        worst.as_secs_f64() * 1000.0
    );
    assert!(worst < OPERATOR_BOUND, "{attack}: worst {worst:?}");
    (median, worst)
}

/// Splits the attack's connections into those the agent holds, and the number it refused at once
/// (answered 429 and closed); all are looked at together, well within the header bound.
async fn held_and_refused(streams: Vec<TcpStream>) -> (Vec<TcpStream>, usize) {
    let heard = futures_util::future::join_all(streams.into_iter().map(|mut s| async move {
        let heard = read_answer(&mut s, Duration::from_millis(300)).await;
        (s, heard)
    }))
    .await;
    let mut held = Vec::new();
    let mut refused = 0;
    for (s, heard) in heard {
        match heard {
            Heard::Answer(429) => refused += 1,
            Heard::Nothing => held.push(s),
            other => panic!("a silent connection heard {other:?}"),
        }
    }
    (held, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_from_one_address_lock_no_one_out() {
    let agent = agent_under_attack();
    let to = agent_addr(&agent);
    let mut streams = Vec::new();
    for _ in 0..ATTACKERS {
        streams.push(connect_from(2, to).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    operator_latency(&agent, "silent connections").await;
    let opened = Instant::now();
    let (mut held, refused) = held_and_refused(streams).await;
    assert_eq!(
        held.len(),
        PEER_CAP,
        "the agent holds one address's cap of connections ({refused} refused)"
    );
    assert_eq!(refused, ATTACKERS - PEER_CAP);
    // The silent ones are closed once their header bound has passed.
    for s in &mut held {
        assert!(
            closed_within(s, Duration::from_secs(HEADER_SECS + 5)).await,
            "a silent connection still open after {:?}",
            opened.elapsed()
        );
    }
    println!(
        "FIGURE silent connections: all {PEER_CAP} held closed {:.1} s after the attack began (bound {HEADER_SECS} s)",
        opened.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_idle_after_one_request_lock_no_one_out() {
    let agent = agent_under_attack();
    let to = agent_addr(&agent);
    let mut streams = Vec::new();
    let mut statuses = Vec::new();
    let mut answered = Vec::new();
    for _ in 0..ATTACKERS {
        let mut s = connect_from(3, to).await;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: agent\r\n\r\n")
            .await
            .unwrap();
        statuses.push(read_answer(&mut s, Duration::from_secs(10)).await);
        answered.push(Instant::now());
        streams.push(s);
    }
    let served = statuses
        .iter()
        .filter(|s| **s == Heard::Answer(200))
        .count();
    let refused = statuses
        .iter()
        .filter(|s| **s == Heard::Answer(429))
        .count();
    assert_eq!(served, PEER_CAP, "{statuses:?}");
    assert_eq!(refused, ATTACKERS - PEER_CAP, "{statuses:?}");
    operator_latency(&agent, "connections idle after one request").await;
    // Those served are kept alive, then closed once idle for the header bound: each is kept at
    // least about that long after its answer (the first one waited on shows it), and none longer
    // than the bound and a margin.
    let mut kept = Vec::new();
    for ((s, status), at) in streams.iter_mut().zip(&statuses).zip(&answered) {
        if *status == Heard::Answer(200) {
            assert!(
                closed_within(s, Duration::from_secs(HEADER_SECS + 5)).await,
                "an idle connection still open after {:?}",
                at.elapsed()
            );
            kept.push(at.elapsed());
        }
    }
    let (first, longest) = (kept[0], kept.iter().max().copied().unwrap_or_default());
    assert!(
        first >= Duration::from_secs(HEADER_SECS) - Duration::from_millis(500),
        "closed {first:?} after its answer"
    );
    println!(
        "FIGURE idle connections: the first kept-alive connection closed {:.1} s after its answer, the last seen closed {:.1} s after (bound {HEADER_SECS} s)",
        first.as_secs_f64(),
        longest.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_never_read_lock_no_one_out() {
    let agent = agent_under_attack();
    let to = agent_addr(&agent);
    // Each attacker (a careless client: it has a token) asks for a large answer, without end, and
    // never reads: once the buffers on both sides are full, the agent's writes make no progress.
    // A small receive buffer (as a client far away or out of memory has) fills them sooner.
    let burst = format!(
        "GET /openapi.json HTTP/1.1\r\nHost: agent\r\nAuthorization: Bearer {}\r\n\r\n",
        agent.token
    )
    .repeat(16);
    let started = Instant::now();
    let mut writers = Vec::new();
    for _ in 0..PEER_CAP + 8 {
        let mut s = connect_with(4, to, Some(4096)).await;
        let burst = burst.clone();
        writers.push(tokio::spawn(async move {
            let began = Instant::now();
            while began.elapsed() < Duration::from_secs(60) {
                if s.write_all(burst.as_bytes()).await.is_err() {
                    return Some(began.elapsed());
                }
            }
            None
        }));
    }
    // Once the writes have stalled.
    tokio::time::sleep(Duration::from_millis(500)).await;
    operator_latency(&agent, "pipelined requests never read").await;
    // Every attacker's connection is closed: at once over the cap, else once a write of its
    // answers has made no progress for the write bound.
    let mut longest = Duration::ZERO;
    for w in writers {
        let ended = w.await.unwrap().expect("the agent closed the connection");
        longest = longest.max(ended);
    }
    assert!(
        longest < Duration::from_secs(WRITE_SECS + 15),
        "{longest:?}"
    );
    println!(
        "FIGURE pipelining: every unread connection closed within {:.1} s (write bound {WRITE_SECS} s; attack took {:.1} s)",
        longest.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    // And the agent serves on.
    operator_latency(&agent, "after the pipelining attack").await;
}

/// Bytes logged so far (each line and its line feed).
fn log_bytes(agent: &AgentProcess) -> usize {
    agent.log_text().len() + 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_tokenless_requests_does_not_flood_the_log() {
    const REQUESTS: usize = 20_000;
    const CONNECTIONS: usize = 8;
    // The default level, human format: as the service runs.
    let agent = AgentProcess::start_with(AgentOptions {
        log_filter: Some("info".into()),
        ..Default::default()
    });
    let client = agent.client();
    let (workload, id) = client.running_app("exit").await;
    let to = agent_addr(&agent);
    let huge = "a".repeat(60 * 1024);
    let request = format!(
        "POST /api/apps/{huge}/stop/ HTTP/1.1\r\nHost: agent\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\nlambda_instance_id={NODE_ID}",
        "lambda_instance_id=".len() + NODE_ID.len()
    );
    let before = log_bytes(&agent);
    let started = Instant::now();
    let flood: Vec<_> = (0..CONNECTIONS)
        .map(|i| {
            let request = request.clone();
            tokio::spawn(async move {
                let mut s = connect_from(5 + i as u8, to).await;
                let mut refused = 0;
                for _ in 0..REQUESTS / CONNECTIONS {
                    s.write_all(request.as_bytes()).await.unwrap();
                    let heard = read_answer(&mut s, Duration::from_secs(30)).await;
                    assert_eq!(heard, Heard::Answer(401));
                    refused += 1;
                }
                refused
            })
        })
        .collect();
    // An accepted operation while the flood is under way.
    let stop = client.okeanos(&id, "stop").await;
    assert_eq!(stop.status, 202, "{stop:?}");
    let mut refused = 0;
    for f in flood {
        refused += f.await.unwrap();
    }
    let took = started.elapsed();
    assert_eq!(refused, REQUESTS);
    assert!(took < Duration::from_secs(240), "{took:?}");
    agent.wait_logged(&[&id, "stopped"], 1);
    let written = log_bytes(&agent) - before;
    println!(
        "FIGURE log flood: {REQUESTS} tokenless requests with 60 KiB paths in {:.1} s; {written} bytes logged meanwhile",
        took.as_secs_f64()
    );
    assert!(
        written < 100 * 1024,
        "{written} bytes:\n{}",
        agent.log_text()
    );
    // The accepted operation's lines are there, and the refusals summed up.
    assert!(
        !agent.logged(&[&id, "stop accepted"]).is_empty(),
        "{}",
        agent.log_text()
    );
    assert!(
        !agent
            .logged(&["requests refused as unauthorized"])
            .is_empty(),
        "{}",
        agent.log_text()
    );
    // Every refusal is counted.
    let metrics = client.metrics_text().await;
    let counted = |prefix: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in\n{metrics}"))
    };
    assert_eq!(
        counted("node_agent_stops_total{route=\"okeanos\",outcome=\"refused\"}"),
        REQUESTS as u64
    );
    assert_eq!(
        counted("node_agent_http_requests_total{code=\"401\"}"),
        REQUESTS as u64
    );
    drop(workload);
}

/// What a forged line would start with: a timestamp and level, as the agent's own lines do.
const FORGED: &str = "2026-01-01T00:00:00.000000Z ERROR node_agent: FORGED";

/// No line the agent wrote holds a carriage return, an escape or another control character, and
/// none starts as a forged one; each `marker` shows up (escaped) in some line.
fn assert_no_forged_line(agent: &AgentProcess, markers: &[&str]) {
    let log = agent.logged(&[]);
    for line in &log {
        assert!(
            !line.chars().any(|c| c.is_control() && c != '\t'),
            "a control character in {line:?}"
        );
        assert!(
            !line.starts_with("2026-01-01T00:00:00"),
            "a forged line: {line:?}"
        );
    }
    for marker in markers {
        assert!(
            log.iter().any(|l| l.contains(marker)),
            "{marker} never logged:\n{}",
            log.join("\n")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_from_outside_never_forges_a_log_line() {
    // A control plane whose refusals carry line breaks and an escape.
    let cp = RawServer::tcp(|_| {
        (
            "400 Bad Request",
            format!("bad report\r\n{FORGED}-report\u{1b}[2J\n"),
        )
    })
    .await;
    // An engine that answers its version and ping, and refuses everything else with an error
    // whose message carries line breaks and an escape.
    let engine = RawServer::unix(|target| {
        if target.ends_with("/_ping") {
            ("200 OK", "OK".to_owned())
        } else if target.ends_with("/version") {
            let version = serde_json::json!({"ApiVersion": "1.41", "MinAPIVersion": "1.12",
                "Version": "20.10.0", "Os": "linux", "Arch": "amd64"});
            ("200 OK", version.to_string())
        } else {
            let message = format!("engine trouble\r\n{FORGED}-engine\u{1b}[2J");
            let error = serde_json::json!({ "message": message });
            ("500 Internal Server Error", error.to_string())
        }
    });
    let agent = AgentProcess::start_with(AgentOptions {
        docker_host: Some(engine.url()),
        report_url: Some(format!("http://{}/reports", cp.addr)),
        ..Default::default()
    });
    let client = agent.client();
    let id = app_id();
    client.register(&id, "some-container").await;
    // The engine's error text.
    let stop = client.stop(&id).await;
    assert!(stop.status >= 500, "{stop:?}");
    // A client's path and request id, with line breaks and an escape.
    let path = format!(
        "/v1/apps/x%0D%0A{}-path%1B%5B2J/stop",
        FORGED.replace(' ', "%20")
    );
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: agent\r\nAuthorization: Bearer {}\r\nX-Request-Id: a\tb\r\nConnection: close\r\n\r\n",
        agent.token
    );
    let (status, _) = support::raw_http(&agent.base, request.as_bytes()).await;
    assert_eq!(status, 400);
    agent.wait_logged(&["FORGED-report"], 1);
    agent.wait_logged(&["FORGED-engine"], 1);
    agent.wait_logged(&["FORGED-path"], 1);
    assert_no_forged_line(&agent, &["FORGED-report", "FORGED-engine", "FORGED-path"]);
}

/// What a [`RawServer`] answers to a request target: its status line's end and its body.
type Answering = fn(&str) -> (&'static str, String);

/// A bare HTTP/1.1 server, on loopback TCP or a Unix socket, answering every request by `answer`.
struct RawServer {
    addr: String,
    _dir: Option<tempfile::TempDir>,
    task: tokio::task::AbortHandle,
}

impl RawServer {
    async fn tcp(answer: Answering) -> RawServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_raw(stream, answer));
            }
        });
        RawServer {
            addr,
            _dir: None,
            task: task.abort_handle(),
        }
    }

    fn unix(answer: Answering) -> RawServer {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("engine.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_raw(stream, answer));
            }
        });
        RawServer {
            addr: path.display().to_string(),
            _dir: Some(dir),
            task: task.abort_handle(),
        }
    }

    fn url(&self) -> String {
        format!("unix://{}", self.addr)
    }
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_raw<S>(mut stream: S, answer: Answering)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut got = Vec::new();
    while let Some(head) = read_message(&mut stream, &mut got).await {
        let target = head.split_whitespace().nth(1).unwrap_or("");
        let (status, body) = answer(target);
        let reply = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nApi-Version: 1.41\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if stream.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}
