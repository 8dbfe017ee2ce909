//! One SSH connection: its logins, its channels, and the SFTP subsystem on
//! each session channel.
//!
//! A failed login takes the same time whoever it names: an unknown user's
//! password is checked against a decoy hash, and russh pads every rejection
//! to `auth_rejection_time`. An address with too many failures in a minute
//! is refused without a check. Passwords and keys are never logged.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use russh::server::{Auth, ChannelOpenHandle, Msg, Session};
use russh::{Channel, ChannelId, ChannelOpenFailure};

use super::fs::Fs;
use super::shared::{Activity, Server};
use crate::serve::sessions::SessionSlot;

/// One connection's handler.
pub(crate) struct Conn {
    server: Arc<Server>,
    peer: Option<SocketAddr>,
    activity: Arc<Activity>,
    /// The user's session, once logged in (counted until dropped).
    session: Option<SessionSlot>,
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
            session: None,
            channels: HashMap::new(),
            opened: 0,
            gone,
        }
    }

    /// Admits `user`'s session if the limits allow.
    fn admit(&mut self, user: &str) -> Auth {
        match self.server.core.open_session(user, self.peer) {
            Some(slot) => {
                self.session = Some(slot);
                Auth::Accept
            }
            None => Auth::reject(),
        }
    }

    fn user(&self) -> Option<String> {
        self.session.as_ref().map(|s| s.user().to_owned())
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let _ = self.gone.send(true);
    }
}

impl russh::server::Handler for Conn {
    type Error = russh::Error;

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        self.activity.touch();
        if self.session.is_some() {
            return Ok(Auth::reject());
        }
        let ip = self.peer.map(|p| p.ip());
        let core = Arc::clone(&self.server.core);
        Ok(if core.password_login(user, password, ip).await {
            self.admit(user)
        } else {
            Auth::reject()
        })
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: russh::server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        // Only a known key is worth a signature; the login is decided below.
        if self.server.core.key_known(user, offer.public_key) {
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
        if self.session.is_none()
            && self
                .server
                .core
                .key_login(user, key.public_key, self.peer.map(|p| p.ip()))
        {
            return Ok(self.admit(user));
        }
        Ok(Auth::reject())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.session.is_none() || self.opened >= self.server.options.max_channels {
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
        let (Some(user), "sftp", Some(channel)) = (self.user(), name, self.channels.remove(&id))
        else {
            session.channel_failure(id)?;
            return Ok(());
        };
        let sb = match self.server.core.sandbox(&user) {
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
            peer: self.peer,
            overwrite: self.server.options.overwrite,
            refuse_setstat: self.server.options.refuse_setstat,
            max_handles: self.server.options.max_handles,
            metrics: Arc::clone(&self.server.core.metrics),
            epoch: self.server.core.started,
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
