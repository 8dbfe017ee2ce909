//! `corral serve sftp`: an SFTP server that lands each user in their
//! sandbox. A driving adapter: every rule and operation is the `corral`
//! library's, and users, logins, sessions, metrics and reload are the
//! serving core's ([`crate::serve`]); this folder holds SSH and SFTP.
//!
//! | module | what |
//! |---|---|
//! | [`host_key`] | the host keys, made on first start |
//! | [`session`] | one SSH connection: logins, channels, the SFTP subsystem |
//! | [`shared`] | what every connection shares: the options, the core, activity |
//! | [`protocol`] | the SFTP loop of a channel: framing, concurrency, the end |
//! | [`order`] | requests on one path served in the order they came |
//! | [`request`] | a request for an open handle |
//! | [`fs`] | SFTP requests as library calls, one handler per request |
//! | [`reply`] | answers, and the status of each error kind |
//!
//! One [`corral::Corral`] (and so one transfer cache) serves every session.

mod fs;
mod host_key;
mod order;
mod protocol;
mod reply;
mod request;
mod session;
mod shared;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use corral::Error;
use russh::MethodKind;

use crate::serve::listener::Listener;
use crate::serve::{Core, proxy};
use session::Conn;
pub(crate) use shared::Options;
use shared::{Activity, Server};

/// The socket, and a second handle on it that only watches for the peer
/// to close or reset it.
fn split_probe(
    tcp: tokio::net::TcpStream,
) -> std::io::Result<(tokio::net::TcpStream, tokio::net::TcpStream)> {
    let std = tcp.into_std()?;
    let dup = std.try_clone()?;
    Ok((
        tokio::net::TcpStream::from_std(std)?,
        tokio::net::TcpStream::from_std(dup)?,
    ))
}

/// Returns once the peer has closed or reset the connection (never reads).
async fn peer_gone(probe: &tokio::net::TcpStream) {
    loop {
        match probe
            .ready(tokio::io::Interest::READABLE | tokio::io::Interest::ERROR)
            .await
        {
            Ok(r) if r.is_read_closed() || r.is_error() => return,
            // Data waiting for russh: look again in a moment.
            Ok(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(_) => return,
        }
    }
}

/// The ciphers offered, in order. A client takes the first of its own
/// list that the server offers, and OpenSSH lists chacha20-poly1305 first:
/// where the CPU has AES instructions (AES-NI and carry-less multiply), AES
/// is faster (512 MiB through `serve sftp` on Memory with OpenSSH, medians
/// of 3: AES-256-GCM 1.51 s up, 1.53 s down; AES-128-CTR 2.06 / 1.63 s;
/// chacha20-poly1305 2.15 / 1.90 s), so chacha is not offered there:
/// OpenSSH takes AES-CTR, clients that list GCM first (Go's, rclone) GCM.
/// Every client corral is tested with speaks AES-CTR (JSch 0.1.55 and
/// libssh2 1.10 have no GCM).
fn ciphers() -> std::borrow::Cow<'static, [russh::cipher::Name]> {
    use russh::cipher::{AES_128_CTR, AES_192_CTR, AES_256_CTR, AES_256_GCM, CHACHA20_POLY1305};
    #[cfg(target_arch = "x86_64")]
    let aes = std::arch::is_x86_feature_detected!("aes")
        && std::arch::is_x86_feature_detected!("pclmulqdq");
    #[cfg(target_arch = "aarch64")]
    let aes = std::arch::is_aarch64_feature_detected!("aes");
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let aes = false;
    if aes {
        std::borrow::Cow::Borrowed(&[AES_256_GCM, AES_256_CTR, AES_192_CTR, AES_128_CTR])
    } else {
        std::borrow::Cow::Borrowed(&[
            CHACHA20_POLY1305,
            AES_256_GCM,
            AES_256_CTR,
            AES_192_CTR,
            AES_128_CTR,
        ])
    }
}

/// Runs the server until SIGTERM or SIGINT, then stops cleanly: no new
/// connection, the sessions ended, their unfinished uploads aborted.
pub(crate) async fn serve(options: Options) -> Result<(), Error> {
    let keys = host_key::load_all(&options.host_keys)?;
    let core = Core::start(options.core.clone()).await?;
    let listener = Listener::bind(options.listen, options.max_sessions, "sessions").await?;
    let config = Arc::new(russh::server::Config {
        methods: russh::MethodSet::from(&[MethodKind::Password, MethodKind::PublicKey][..]),
        auth_rejection_time: Duration::from_secs(1),
        auth_rejection_time_initial: Some(Duration::ZERO),
        max_auth_attempts: 6,
        keys,
        // The idle clock is corral's (SFTP requests, not keepalives); this
        // only ends a connection that sends nothing at all.
        inactivity_timeout: Some(options.idle_timeout + Duration::from_secs(30)),
        keepalive_interval: Some(options.keepalive),
        keepalive_max: 3,
        nodelay: true,
        // Messages (up to 32 KiB each) queued per channel: bytes outside the
        // transfer cache, for every session at once.
        channel_buffer_size: 8,
        preferred: russh::Preferred {
            cipher: ciphers(),
            ..Default::default()
        },
        // russh's window (2 MiB) and packet size (32 KiB) are kept: 8 MiB
        // and 64 KiB, or 16 MiB and 256 KiB, measured no faster on Garage
        // (within the runs' noise, docs/PERFORMANCE.md), and a larger
        // packet makes each queued message larger.
        ..Default::default()
    });
    let server = Arc::new(Server { core, options });
    let c = &server.options.core.cache;
    tracing::info!(
        listen = %server.options.listen,
        users = server.core.live().users.len(),
        cache = %corral::human_size(c.total),
        per_user = %corral::human_size(c.per_account()),
        "serving SFTP"
    );
    while let Some((tcp, peer, slot)) = listener.next(&server.core.stop).await {
        let (server, config) = (Arc::clone(&server), Arc::clone(&config));
        tokio::spawn(async move {
            // Held until the connection ends.
            let _slot = slot;
            let mut tcp = tcp;
            let _ = tcp.set_nodelay(true);
            // Behind a balancer, the client is who its header says.
            let peer = match proxy::client_address(&mut tcp, peer, &server.core.options.proxy_from)
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(%peer, "connection refused: {e}");
                    return;
                }
            };
            // A second handle on the socket, only to see the peer go: russh
            // reads the socket in the same loop that hands data to the
            // channels, and a channel that does not take more (its writes
            // wait for the cache) stops it, so it would not see a killed
            // client until then.
            let (tcp, probe) = match split_probe(tcp) {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "cannot set the connection up");
                    return;
                }
            };
            let activity = Arc::new(Activity::new());
            // Told when the connection is gone: by the handler's end, or by
            // the probe first (the handler's loop may be stuck behind a
            // channel; stopping the channels unsticks it).
            let gone = Arc::new(tokio::sync::watch::Sender::new(false));
            let conn = Conn::new(
                Arc::clone(&server),
                Some(peer),
                Arc::clone(&activity),
                Arc::clone(&gone),
            );
            match russh::server::run_stream(config, tcp, conn).await {
                Ok(session) => {
                    let handle = session.handle();
                    let idle = server.options.idle_timeout;
                    let watchdog = async {
                        loop {
                            tokio::time::sleep(Duration::from_secs(1).min(idle)).await;
                            if activity.idle() >= idle {
                                tracing::info!(%peer, "idle timeout: closing the session");
                                let _ = tokio::time::timeout(
                                    Duration::from_secs(2),
                                    handle.disconnect(
                                        russh::Disconnect::ByApplication,
                                        "idle timeout".into(),
                                        String::new(),
                                    ),
                                )
                                .await;
                                break;
                            }
                        }
                    };
                    let watch_peer = async {
                        peer_gone(&probe).await;
                        tracing::debug!(%peer, "the client went away");
                        gone.send_replace(true);
                        // The handler's loop then ends as its channels do.
                        std::future::pending::<()>().await;
                    };
                    let stopping = async {
                        server.core.stop.cancelled().await;
                        // The channels' loops stop and give their open
                        // files up; then the connection closes.
                        gone.send_replace(true);
                        let _ = tokio::time::timeout(
                            Duration::from_secs(2),
                            handle.disconnect(
                                russh::Disconnect::ByApplication,
                                "the server is stopping".into(),
                                String::new(),
                            ),
                        )
                        .await;
                    };
                    tokio::select! {
                        r = session => if let Err(e) = r {
                            tracing::debug!(%peer, error = %e, "session ended with an error");
                        },
                        () = watchdog => {}
                        () = watch_peer => {}
                        () = stopping => {}
                    }
                }
                Err(e) => tracing::debug!(%peer, error = %e, "SSH handshake failed"),
            }
        });
    }
    // Stopping: the connections end (each was told), then what they were
    // writing is given up and aborted.
    listener.drain().await;
    server.core.finish().await;
    Ok(())
}
