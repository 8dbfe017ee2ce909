//! One SSH connection: its logins, its channels, and the SFTP subsystem on
//! each session channel.
//!
//! A failed login takes the same time whoever it names: an unknown user's
//! password is checked against a decoy hash, and russh pads every rejection
//! to `auth_rejection_time`. An address with too many failures in a minute
//! is refused without a check. Passwords and keys are never logged.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use russh::server::{Auth, ChannelOpenHandle, Msg, Session};
use russh::{Channel, ChannelId, ChannelOpenFailure};

use super::fs::Fs;
use super::{Activity, Server};

/// Failed logins an address may make in [`WINDOW`] before it is refused.
const MAX_FAILURES: u32 = 10;
const WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// Failed logins by address.
#[derive(Debug, Default)]
pub(crate) struct Failures(std::sync::Mutex<HashMap<IpAddr, (u32, std::time::Instant)>>);

impl Failures {
    fn blocked(&self, ip: Option<IpAddr>) -> bool {
        let Some(ip) = ip else { return false };
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&ip)
            .is_some_and(|(n, since)| *n >= MAX_FAILURES && since.elapsed() < WINDOW)
    }

    fn failed(&self, ip: Option<IpAddr>) {
        let Some(ip) = ip else { return };
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, (_, since)| since.elapsed() < WINDOW);
        let e = map.entry(ip).or_insert((0, std::time::Instant::now()));
        e.0 += 1;
    }
}

/// One connection's handler.
pub(crate) struct Conn {
    server: Arc<Server>,
    peer: Option<SocketAddr>,
    activity: Arc<Activity>,
    /// The user, once logged in (and counted against the session limits).
    user: Option<String>,
    channels: HashMap<ChannelId, Channel<Msg>>,
    opened: usize,
    /// Told when the connection is gone, so that its channels' loops stop
    /// sending to a client that will never read.
    gone: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Conn {
    pub(crate) fn new(
        server: Arc<Server>,
        peer: Option<SocketAddr>,
        activity: Arc<Activity>,
        gone: Arc<tokio::sync::watch::Sender<bool>>,
    ) -> Self {
        Self {
            server,
            peer,
            activity,
            user: None,
            channels: HashMap::new(),
            opened: 0,
            gone,
        }
    }

    /// Admits `user`'s session if the limits allow.
    fn admit(&mut self, user: &str) -> Auth {
        if !self.server.sessions.enter(user) {
            tracing::warn!(user, peer = ?self.peer, "login refused: too many sessions for this user");
            return Auth::reject();
        }
        self.server.metrics.sessions.fetch_add(1, Ordering::Relaxed);
        self.server
            .metrics
            .sessions_total
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(user, peer = ?self.peer, "logged in");
        self.user = Some(user.to_owned());
        Auth::Accept
    }

    fn reject(&self, user: &str, method: &str) -> Auth {
        self.server
            .metrics
            .logins_failed
            .fetch_add(1, Ordering::Relaxed);
        self.server.failures.failed(self.peer.map(|p| p.ip()));
        tracing::info!(user, peer = ?self.peer, method, "login failed");
        Auth::reject()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let _ = self.gone.send(true);
        if let Some(user) = self.user.take() {
            self.server.sessions.leave(&user);
            self.server.metrics.sessions.fetch_sub(1, Ordering::Relaxed);
            tracing::info!(user, peer = ?self.peer, "session ended");
        }
    }
}

impl russh::server::Handler for Conn {
    type Error = russh::Error;

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        self.activity.touch();
        if self.user.is_some() || self.server.failures.blocked(self.peer.map(|p| p.ip())) {
            return Ok(self.reject(user, "password"));
        }
        let users = Arc::clone(&self.server.live().users);
        // argon2 takes tens of milliseconds and 19 MiB: on the server's few
        // password threads, off the async ones.
        let server = Arc::clone(&self.server);
        let ok = server
            .checks
            .check(users, user.to_owned(), password.to_owned())
            .await;
        Ok(if ok {
            self.admit(user)
        } else {
            self.reject(user, "password")
        })
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: russh::server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        // Only a known key is worth a signature; the login is decided below.
        if self.server.live().users.key_matches(user, offer.public_key) {
            Ok(Auth::Accept)
        } else {
            Ok(Auth::reject())
        }
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: russh::server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        self.activity.touch();
        if self.user.is_none()
            && !self.server.failures.blocked(self.peer.map(|p| p.ip()))
            && self.server.live().users.key_matches(user, key.public_key)
        {
            return Ok(self.admit(user));
        }
        Ok(self.reject(user, "publickey"))
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.user.is_none() || self.opened >= self.server.options.max_channels {
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        }
        self.opened += 1;
        self.channels.insert(channel.id(), channel);
        reply.accept().await;
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        id: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let (Some(user), "sftp", Some(channel)) =
            (self.user.clone(), name, self.channels.remove(&id))
        else {
            session.channel_failure(id)?;
            return Ok(());
        };
        let live = self.server.live();
        let Some(identity) = live.users.identity(&user) else {
            session.channel_failure(id)?;
            return Ok(());
        };
        // A user's own File sandbox (from a `%u` template) is made on first login.
        match live.corral.create_user_roots(&identity) {
            Ok(made) => {
                for dir in made {
                    tracing::info!(user, dir, "made the user's File sandbox");
                }
            }
            Err(e) => tracing::warn!(user, error = %e, "cannot make the user's File sandbox"),
        }
        let sb = match live.corral.sandbox(&identity) {
            Ok(sb) => sb,
            Err(e) => {
                tracing::warn!(user, error = %e, "no sandbox for this user");
                session.channel_failure(id)?;
                return Ok(());
            }
        };
        session.channel_success(id)?;
        let fs = Arc::new(Fs {
            sb,
            user,
            overwrite: self.server.options.overwrite,
            refuse_setstat: self.server.options.refuse_setstat,
            max_handles: self.server.options.max_handles,
            metrics: Arc::clone(&self.server.metrics),
            epoch: self.server.started,
        });
        let activity = Arc::clone(&self.activity);
        let handle = session.handle();
        let gone = self.gone.subscribe();
        tokio::spawn(async move {
            let ending = async move {
                let _ = handle.exit_status_request(id, 0).await;
            };
            let stream = Touching::new(channel.into_stream(), activity);
            super::protocol::run(stream, fs, ending, gone).await;
        });
        Ok(())
    }

    async fn exec_request(
        &mut self,
        id: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Only SFTP is served (scp in its SFTP mode included).
        session.channel_failure(id)?;
        Ok(())
    }

    async fn shell_request(
        &mut self,
        id: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(id)?;
        Ok(())
    }
}

/// A channel stream that tells the connection's idle clock when the client
/// sends something.
pub(crate) struct Touching<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Touching<S> {
    fn new(inner: S, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Touching<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Touching<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
