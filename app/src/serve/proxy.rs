//! The client's address behind a TCP balancer: the PROXY protocol v2
//! header (HAProxy's `send-proxy-v2`) that a trusted balancer puts before
//! the connection's first byte. Off unless the operator names the
//! balancers' addresses: a header from anyone else would let a client claim
//! any address (and dodge the per-address lockout).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ppp::v2::{Addresses, Command, Header, PROTOCOL_PREFIX};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The fixed part of a v2 header: the 12-byte signature, version and
/// command, family and protocol, and the length of what follows.
const FIXED: usize = 16;

/// How long a trusted balancer has to send its header (it sends it at once).
const WAIT: Duration = Duration::from_secs(5);

/// The client's address: `peer` itself unless it is one of `trusted`, in
/// which case the PROXY v2 header is read off `tcp` (and only it) and its
/// source address returned; a `LOCAL` header (the balancer's own health
/// check) keeps `peer`. Errors say why the connection is refused.
pub(crate) async fn client_address(
    tcp: &mut TcpStream,
    peer: SocketAddr,
    trusted: &[IpAddr],
) -> Result<SocketAddr, String> {
    if !trusted.contains(&peer.ip()) {
        return Ok(peer);
    }
    let read = async {
        let mut buf = vec![0u8; FIXED];
        tcp.read_exact(&mut buf).await?;
        // Anything else (a client let through without a header) is refused
        // at once, not after waiting for a length it never meant.
        if !buf.starts_with(PROTOCOL_PREFIX) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the connection does not start with one",
            ));
        }
        let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
        buf.resize(FIXED + len, 0);
        tcp.read_exact(&mut buf[FIXED..]).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = match tokio::time::timeout(WAIT, read).await {
        Ok(Ok(buf)) => buf,
        Ok(Err(e)) => return Err(format!("no PROXY protocol header from the balancer: {e}")),
        Err(_) => {
            return Err(format!(
                "no PROXY protocol header from the balancer within {} s",
                WAIT.as_secs()
            ));
        }
    };
    let header = Header::try_from(buf.as_slice())
        .map_err(|e| format!("a malformed PROXY protocol header: {e}"))?;
    Ok(match (header.command, header.addresses) {
        (Command::Proxy, Addresses::IPv4(a)) => {
            SocketAddr::new(IpAddr::V4(a.source_address), a.source_port)
        }
        (Command::Proxy, Addresses::IPv6(a)) => {
            SocketAddr::new(IpAddr::V6(a.source_address), a.source_port)
        }
        // LOCAL (a health check), or an address family without a port.
        _ => peer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use ppp::v2::{Builder, Protocol, Version};
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// What the server reads after sending `prefix` then `rest` from a
    /// client, trusting `trusted`.
    async fn through(prefix: Vec<u8>, trusted: bool) -> (Result<SocketAddr, String>, Vec<u8>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.expect("connect");
            c.write_all(&prefix).await.expect("write");
            c.write_all(b"SSH-2.0-x\r\n").await.expect("write");
            c
        });
        let (mut tcp, peer) = listener.accept().await.expect("accept");
        let trust: Vec<IpAddr> = if trusted { vec![peer.ip()] } else { vec![] };
        let got = client_address(&mut tcp, peer, &trust).await;
        let _c = client.await.expect("client");
        // What follows the header is the client's own stream, untouched.
        let mut rest = vec![0u8; 11];
        let rest = match got {
            Ok(_) => {
                tcp.read_exact(&mut rest).await.expect("the stream");
                rest
            }
            Err(_) => Vec::new(),
        };
        (got, rest)
    }

    fn header(command: Command, from: &str) -> Vec<u8> {
        let from: SocketAddr = from.parse().expect("addr");
        // Both addresses of one family, as a balancer sends them.
        let to: SocketAddr = if from.is_ipv4() {
            "127.0.0.1:2222"
        } else {
            "[::1]:2222"
        }
        .parse()
        .expect("addr");
        Builder::with_addresses(Version::Two | command, Protocol::Stream, (from, to))
            .build()
            .expect("header")
    }

    #[tokio::test]
    async fn a_trusted_balancer_names_the_client_and_the_stream_goes_on() {
        let (got, rest) = through(header(Command::Proxy, "192.0.2.7:40001"), true).await;
        assert_eq!(got, Ok("192.0.2.7:40001".parse().expect("addr")));
        assert_eq!(rest, b"SSH-2.0-x\r\n");
        let (got, _) = through(header(Command::Proxy, "[2001:db8::1]:5"), true).await;
        assert_eq!(got, Ok("[2001:db8::1]:5".parse().expect("addr")));
    }

    #[tokio::test]
    async fn a_local_header_keeps_the_peer() {
        let (got, rest) = through(header(Command::Local, "192.0.2.7:40001"), true).await;
        assert!(got.expect("local").ip().is_loopback());
        assert_eq!(rest, b"SSH-2.0-x\r\n");
    }

    #[tokio::test]
    async fn an_untrusted_peer_is_not_read_and_a_missing_header_is_refused() {
        // Not trusted: the header is not read, so it cannot claim an address.
        let (got, _) = through(header(Command::Proxy, "192.0.2.7:40001"), false).await;
        assert!(got.expect("untrusted").ip().is_loopback());
        // Trusted but no header: refused, saying why.
        let (got, _) = through(Vec::new(), true).await;
        let e = got.expect_err("refused");
        assert!(e.contains("PROXY protocol header"), "{e}");
    }
}
