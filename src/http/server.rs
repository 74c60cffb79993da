//! The HTTP server under the router: accepts connections on a TCP listener (plain or TLS) or a Unix
//! socket, at most `max_connections` at once and, on TCP, at most `max_connections_per_peer` from
//! one address; gives every request a header read timeout (which also ends a kept-alive connection
//! left idle, and bounds every TLS handshake) and every write a time limit, so that slow, silent or
//! unread clients cannot hold connections; tells each request how it arrived ([`Transport`]);
//! serves HTTP/1.1, and shuts down gracefully.
//!
//! HTTP/2 is not offered: hyper's protocol detection waits for a client's first bytes without a
//! timeout, and HTTP/2 has no header read timeout, so either would let silent clients keep slots.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::refusals::{self, Refusal};
use super::tls::Tls;
use crate::quota::Quota;

/// How much the server lets each client take.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Connections one address may hold at once on a TCP listener; one more is answered 429 and
    /// closed at once, so that one peer can never take the slots every other peer needs.
    pub max_connections_per_peer: usize,
    /// Time a client has to finish its TLS handshake, and to send a request's headers, on a new or a
    /// kept-alive connection: the bound of an idle connection too.
    pub header_timeout: Duration,
    /// Time a write may make no progress (a client that does not read its answers) before the
    /// connection is closed.
    pub write_timeout: Duration,
}

/// How a request reached the agent; every request carries it as an extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp {
        peer: SocketAddr,
    },
    Tls {
        peer: SocketAddr,
    },
    /// The Unix socket; `uid` is the peer's user id from the kernel (`SO_PEERCRED`).
    Unix {
        uid: Option<u32>,
    },
}

/// A socket the agent serves on.
#[derive(Debug)]
pub enum Listener {
    /// TCP, with TLS when a configuration is given.
    Tcp(TcpListener, Option<Tls>),
    Unix(UnixSocket),
}

/// A bound Unix socket; its file is removed when this is dropped, if it is still this socket's.
#[derive(Debug)]
pub struct UnixSocket {
    listener: UnixListener,
    path: PathBuf,
    /// Device and inode of the socket file bound, so that `Drop` never removes a file that has
    /// since replaced it.
    file: (u64, u64),
}

impl UnixSocket {
    /// Binds `path` with mode 0660 (owner and group may connect). A socket file that refuses
    /// connections (left by an agent that died) is replaced; one that a live process serves, one
    /// the agent cannot tell about (say, another user's), or a file that is not a socket, is not
    /// touched.
    ///
    /// The socket file is never more open than 0660, not even for an instant: nobody else can
    /// connect before its mode is right.
    pub async fn bind(path: &Path) -> std::io::Result<UnixSocket> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "the path exists and is not a socket",
                ));
            }
            // A non-blocking connect: a live server with a full backlog answers "would block"
            // rather than holding start-up.
            match tokio::net::UnixStream::connect(path).await {
                Ok(_) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::AddrInUse,
                        "another process serves on this socket",
                    ));
                }
                Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => {
                    std::fs::remove_file(path)?;
                }
                Err(err) => {
                    return Err(std::io::Error::new(
                        err.kind(),
                        format!(
                            "a socket file is there and connecting to it fails ({err}), so it may \
                             not be stale: remove it if no process serves it"
                        ),
                    ));
                }
            }
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        // Linux gives a socket's file the mode of the socket itself, less the umask: set to 0660
        // before the bind, the file is born no more open than that, whatever the umask.
        use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
        let socket = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )?;
        rustix::fs::fchmod(&socket, rustix::fs::Mode::from_raw_mode(0o660))?;
        // bind() refuses a path that exists: a file that appeared since the check above is left
        // alone too.
        rustix::net::bind(&socket, &SocketAddrUnix::new(path)?)?;
        // Under a umask the file may be narrower than 0660; widen it to exactly that, on the file
        // just made, never through a symbolic link put in its place.
        let file = rustix::fs::open(
            path,
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )?;
        let stat = rustix::fs::fstat(&file)?;
        if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::Socket {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "the socket file was replaced while it was being made",
            ));
        }
        std::fs::set_permissions(
            format!("/proc/self/fd/{}", file.as_raw_fd()),
            std::fs::Permissions::from_mode(0o660),
        )?;
        rustix::net::listen(&socket, 1024)?;
        let listener = UnixListener::from_std(std::os::unix::net::UnixListener::from(socket))?;
        Ok(UnixSocket {
            listener,
            path: path.to_owned(),
            file: (stat.st_dev, stat.st_ino),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for UnixSocket {
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt;
        if let Ok(meta) = std::fs::symlink_metadata(&self.path)
            && (meta.dev(), meta.ino()) == self.file
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Listener {
    async fn accept(&self) -> std::io::Result<Accepted> {
        match self {
            Listener::Tcp(listener, tls) => {
                let (stream, peer) = listener.accept().await?;
                // Small requests and answers: do not wait to fill a segment.
                let _ = stream.set_nodelay(true);
                Ok(match tls {
                    None => Accepted::Tcp(stream, Transport::Tcp { peer }),
                    // The acceptor is taken per connection, so a reloaded certificate serves the
                    // next handshake.
                    Some(tls) => Accepted::Tls(stream, tls.acceptor(), Transport::Tls { peer }),
                })
            }
            Listener::Unix(socket) => {
                let (stream, _) = socket.listener.accept().await?;
                let uid = stream.peer_cred().ok().map(|c| c.uid());
                Ok(Accepted::Unix(stream, Transport::Unix { uid }))
            }
        }
    }
}

enum Accepted {
    Tcp(tokio::net::TcpStream, Transport),
    Tls(tokio::net::TcpStream, tokio_rustls::TlsAcceptor, Transport),
    Unix(tokio::net::UnixStream, Transport),
}

impl Accepted {
    /// The TCP peer's address, as one peer: an IPv4 address mapped into IPv6 is that IPv4 address.
    fn peer(&self) -> Option<IpAddr> {
        match self {
            Accepted::Tcp(_, Transport::Tcp { peer })
            | Accepted::Tls(_, _, Transport::Tls { peer }) => Some(peer.ip().to_canonical()),
            _ => None,
        }
    }

    /// Answers 429 to a connection over its peer's cap and closes it, without waiting: the answer
    /// is small enough for the empty send buffer of a new socket, and a client that does not take
    /// it loses nothing it was promised.
    fn refuse(self, cap: usize) {
        if let Accepted::Tcp(stream, _) = &self {
            let body = format!(
                "{{\"status\":429,\"error\":\"too_many_requests\",\"message\":\"this address \
                 holds {cap} connections, the most one peer may hold; close one first\"}}"
            );
            let answer = format!(
                "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.try_write(answer.as_bytes());
        }
        // A TLS client is refused before its handshake, so it cannot be answered: it is closed.
    }
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then stops accepting and waits for
/// the connections under way to finish their requests (the caller bounds that wait).
///
/// A global permit is taken before each accept, so that connections beyond `max_connections` wait
/// in the kernel's backlog; a peer's cap is checked right after the accept, and a connection over
/// it is closed at once rather than held. With the per-peer cap below the global one, no single
/// address can make the accept loop wait: others are always let in.
pub async fn serve(
    listener: Listener,
    router: Router,
    limits: ServerLimits,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let peers = Quota::<IpAddr>::new(limits.max_connections_per_peer);
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    // hyper starts the header read timeout again for each request, the wait for the next one on a
    // kept-alive connection included: an idle connection is closed after it too.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    'accepting: loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            () = shutdown.cancelled() => break,
        };
        // The permit is kept across refused connections: it is only spent on one that is served.
        let (accepted, slot) = loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors, or a connection reset before it was accepted:
                        // the listener itself is fine, so pause briefly rather than spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = shutdown.cancelled() => break 'accepting,
            };
            let Some(ip) = accepted.peer() else {
                break (accepted, None);
            };
            match peers.take(&ip, true) {
                Some(slot) => break (accepted, Some(slot)),
                None => {
                    refusals::note(Refusal::PeerCap, || format!("peer {ip}"));
                    accepted.refuse(peers.cap());
                }
            }
        };
        let watcher = graceful.watcher();
        let builder = builder.clone();
        let router = router.clone();
        let (handshake_limit, write_limit) = (limits.header_timeout, limits.write_timeout);
        tokio::spawn(async move {
            let _permit = permit;
            let _slot = slot;
            match accepted {
                Accepted::Tcp(stream, transport) => {
                    let stream = WriteBound::new(stream, write_limit);
                    serve_connection(&builder, watcher, stream, router, transport).await;
                }
                Accepted::Unix(stream, transport) => {
                    let stream = WriteBound::new(stream, write_limit);
                    serve_connection(&builder, watcher, stream, router, transport).await;
                }
                Accepted::Tls(stream, acceptor, transport) => {
                    // Under TLS, so that the handshake's writes are bounded as well.
                    let stream = WriteBound::new(stream, write_limit);
                    match tokio::time::timeout(handshake_limit, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            serve_connection(&builder, watcher, stream, router, transport).await;
                        }
                        Ok(Err(e)) => {
                            // At debug, as unknown tokens are: anyone who reaches the port can
                            // fail handshakes, and the client hears why from its own side.
                            tracing::debug!(?transport, error = %e, "TLS handshake refused");
                        }
                        Err(_) => {
                            tracing::debug!(?transport, "TLS handshake timed out");
                        }
                    }
                }
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// A connection whose writes fail once one has made no progress for `limit`: a client that sends
/// requests and never reads the answers fills the kernel's buffers, and without this the write
/// would wait, holding the connection's slot, for as long as the client likes.
struct WriteBound<I> {
    io: I,
    limit: Duration,
    /// Set while a write waits: when it ends, the connection is given up.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<I> WriteBound<I> {
    fn new(io: I, limit: Duration) -> WriteBound<I> {
        WriteBound {
            io,
            limit,
            stalled: None,
        }
    }

    /// What to make of a write's (or flush's) poll: progress clears the deadline; waiting starts
    /// it, or fails once it has passed.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let limit = self.limit;
        let deadline = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the client read nothing for {} s", limit.as_secs()),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for WriteBound<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for WriteBound<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write(cx, buf);
        self.watch(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.io).poll_flush(cx);
        self.watch(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.io).poll_shutdown(cx);
        self.watch(cx, poll)
    }
}

async fn serve_connection<I>(
    builder: &http1::Builder,
    watcher: Watcher,
    io: I,
    router: Router,
    transport: Transport,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = tower::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(transport);
        router.clone().oneshot(req)
    });
    let connection = watcher
        .watch(builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(service)));
    if let Err(e) = connection.await {
        tracing::debug!(?transport, error = %e, "connection ended with an error");
    }
}
