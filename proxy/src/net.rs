//! Socket plumbing: binding capture listeners, recovering a redirected
//! connection's original destination, and dialing upstreams.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::time::Duration;

use nix::sys::socket::{getsockopt, sockopt};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

const LISTEN_BACKLOG: i32 = 1024;

/// Binds a TCP listener. An IPv6 listener is IPv6-only, so the IPv4 and
/// IPv6 listeners on the same port can coexist and each reads the original
/// destination of its own family.
pub(crate) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// The destination the client asked for before iptables redirected the
/// connection to the proxy (SO_ORIGINAL_DST, or IP6T_SO_ORIGINAL_DST).
pub(crate) fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    let local = stream.local_addr()?;
    let addr = if local.is_ipv4() {
        let sin = getsockopt(stream, sockopt::OriginalDst)?;
        SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
            u16::from_be(sin.sin_port),
        ))
    } else {
        let sin6 = getsockopt(stream, sockopt::Ip6tOriginalDst)?;
        SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(sin6.sin6_addr.s6_addr),
            u16::from_be(sin6.sin6_port),
            0,
            0,
        ))
    };
    Ok(addr)
}

/// Dials `dst`, optionally from a fixed source address, giving up after
/// `timeout`.
pub(crate) async fn connect(
    dst: SocketAddr,
    source: Option<IpAddr>,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let socket = match dst {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = tokio::time::timeout(timeout, socket.connect(dst))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    // Upstream connections may sit in a pool for long: let the kernel find
    // peers that vanished (a deleted pod, a dead node).
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10));
    socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive)?;
    Ok(stream)
}
