//! Apps and clients inside pods: listeners and client sockets created in the
//! pod's namespace and driven from the test's tokio runtime.
//!
//! Apps run as the test process (uid 0), never as the proxy's uid 1337, so
//! their traffic is subject to capture like a real app's.

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use socket2::{Domain, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

use crate::netns::Pod;
use crate::WAIT;

/// A server app running in a pod on the test's runtime; stopped on drop.
#[derive(Debug)]
pub struct App {
    port: u16,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl App {
    /// The port the app listens on (IPv4 `0.0.0.0` and IPv6 `[::]`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The peer address of every connection the app accepted so far, in order.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().expect("peer list poisoned").clone()
    }

    /// How many connections the app accepted so far.
    pub fn accepted(&self) -> usize {
        self.peers.lock().expect("peer list poisoned").len()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Pod {
    /// A listener on `0.0.0.0:port` inside the pod (backlog 4096).
    pub fn listen_tcp(&self, port: u16) -> TcpListener {
        self.listen((Ipv4Addr::UNSPECIFIED, port).into())
    }

    /// An IPv6-only listener on `[::]:port` inside the pod (backlog 4096).
    pub fn listen_tcp6(&self, port: u16) -> TcpListener {
        self.listen((Ipv6Addr::UNSPECIFIED, port).into())
    }

    fn listen(&self, addr: SocketAddr) -> TcpListener {
        let std = self
            .enter(|| -> io::Result<std::net::TcpListener> {
                let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
                if addr.is_ipv6() {
                    socket.set_only_v6(true)?;
                }
                socket.set_reuse_address(true)?;
                socket.bind(&addr.into())?;
                socket.listen(4096)?;
                socket.set_nonblocking(true)?;
                Ok(socket.into())
            })
            .unwrap_or_else(|e| panic!("pod {}: cannot listen on {addr}: {e}", self.name()));
        TcpListener::from_std(std).expect("register listener with the tokio runtime")
    }

    /// A fresh, unconnected TCP socket created inside the pod.
    pub fn socket_for(&self, addr: SocketAddr) -> TcpSocket {
        self.enter(|| {
            if addr.is_ipv4() {
                TcpSocket::new_v4()
            } else {
                TcpSocket::new_v6()
            }
        })
        .unwrap_or_else(|e| panic!("pod {}: cannot create a socket: {e}", self.name()))
    }

    /// Connects from inside the pod to `addr` (bounded by [`WAIT`]); errors
    /// such as "connection refused" are returned, not panicked on.
    pub async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let socket = self.socket_for(addr);
        match tokio::time::timeout(WAIT, socket.connect(addr)).await {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect to {addr} timed out after {WAIT:?}"),
            )),
        }
    }

    /// Starts `handler` for every connection accepted on `port` (both
    /// `0.0.0.0` and `[::]`) inside the pod.
    pub fn spawn_server<H, Fut>(&self, port: u16, handler: H) -> App
    where
        H: Fn(TcpStream) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let peers = Arc::new(Mutex::new(Vec::new()));
        let tasks = [self.listen_tcp(port), self.listen_tcp6(port)]
            .into_iter()
            .map(|listener| {
                let peers = peers.clone();
                let handler = handler.clone();
                tokio::spawn(async move {
                    while let Ok((stream, peer)) = listener.accept().await {
                        peers.lock().expect("peer list poisoned").push(peer);
                        tokio::spawn(handler(stream));
                    }
                })
            })
            .collect();
        App { port, peers, tasks }
    }

    /// An echo app on `port`: it writes back everything it reads and closes
    /// its write side after reading EOF.
    pub fn spawn_echo_server(&self, port: u16) -> App {
        self.spawn_server(port, echo)
    }

    /// An app that speaks first: it writes `banner` on accept, then echoes.
    pub fn spawn_banner_server(&self, port: u16, banner: &'static [u8]) -> App {
        self.spawn_server(port, move |mut stream: TcpStream| async move {
            if stream.write_all(banner).await.is_ok() {
                echo(stream).await;
            }
        })
    }
}

/// Echoes `stream` until EOF, then shuts down the write side.
pub async fn echo(stream: TcpStream) {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::with_capacity(64 * 1024, read);
    if tokio::io::copy_buf(&mut read, &mut write).await.is_ok() {
        let _ = write.shutdown().await;
    }
}

/// Writes `payload`, shuts down the write side, and reads until EOF.
pub async fn round_trip(stream: &mut TcpStream, payload: &[u8]) -> io::Result<Vec<u8>> {
    let (mut read, mut write) = stream.split();
    let writer = async {
        write.write_all(payload).await?;
        write.shutdown().await
    };
    let mut reply = Vec::new();
    let reader = read.read_to_end(&mut reply);
    tokio::try_join!(writer, reader)?;
    Ok(reply)
}

/// Writes `payload` while reading back exactly as many bytes (concurrently,
/// so large payloads cannot deadlock on full buffers). Leaves the stream open.
pub async fn exchange(stream: &mut TcpStream, payload: &[u8]) -> io::Result<Vec<u8>> {
    let (mut read, mut write) = stream.split();
    let mut reply = vec![0; payload.len()];
    tokio::try_join!(write.write_all(payload), read.read_exact(&mut reply))?;
    Ok(reply)
}

/// Fails the test unless the peer closes `stream` (EOF or reset) within
/// [`WAIT`] without sending any data first. Returns whether it was a reset.
pub async fn assert_closed_without_data(stream: &mut TcpStream, what: &str) -> bool {
    let mut buf = [0; 1024];
    match tokio::time::timeout(WAIT, stream.read(&mut buf)).await {
        Err(_) => panic!("{what}: connection still open after {WAIT:?}"),
        Ok(Ok(0)) => false,
        Ok(Ok(n)) => panic!(
            "{what}: expected the connection to be closed, got {n} bytes: {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionReset => true,
        Ok(Err(e)) => panic!("{what}: expected EOF or reset, got {e}"),
    }
}

impl Pod {
    /// A minimal HTTP/1.1 app on `port`: for each request it answers
    /// `200 OK` with `body`, then closes.
    pub fn spawn_http_server(&self, port: u16, body: &'static str) -> App {
        self.spawn_server(port, move |mut stream: TcpStream| async move {
            let mut head = Vec::new();
            let mut buf = [0; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        })
    }
}
