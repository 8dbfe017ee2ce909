//! `corral serve sftp`: an SFTP server that lands each user in their
//! sandbox. A driving adapter: every rule and operation is the `corral`
//! library's; this folder holds SSH and SFTP.
//!
//! | module | what |
//! |---|---|
//! | [`users`] | the users file: password hashes, authorized keys, `%d`/`%f` values |
//! | [`host_key`] | the host key, made on first start |
//! | [`session`] | one SSH connection: logins, limits, the SFTP subsystem |
//! | [`protocol`] | the SFTP loop of a channel: framing, concurrency, the end |
//! | [`order`] | requests on one path served in the order they came |
//! | [`request`] | a request for an open handle |
//! | [`fs`] | SFTP requests as library calls |
//! | [`reply`] | answers, and the status of each error kind |
//! | [`metrics`] | counters, the transfer log, the Prometheus endpoint |
//!
//! One [`Corral`] (and so one transfer cache) serves every session. SIGHUP
//! reloads the users file and the mappings: sessions go on, new logins see
//! the new ones; a configuration that does not load is refused and the one
//! in force stays.

mod fs;
mod host_key;
mod metrics;
mod order;
mod protocol;
mod reply;
mod request;
mod session;
pub(crate) mod users;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use corral::cache::CacheConfig;
use corral::config::ConfigFile;
use corral::{Corral, Error, ErrorKind, OverwriteMode};
use russh::MethodKind;
use tokio::net::TcpListener;

use session::{Conn, Failures};
use users::Users;

/// How the server runs (the command's flags).
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) listen: SocketAddr,
    pub(crate) host_keys: Vec<PathBuf>,
    pub(crate) users: PathBuf,
    /// The mappings (a config file, or bare mappings); `None`: the embedded default.
    pub(crate) config: Option<PathBuf>,
    pub(crate) cache: CacheConfig,
    pub(crate) metrics: Option<SocketAddr>,
    pub(crate) idle_timeout: Duration,
    pub(crate) keepalive: Duration,
    pub(crate) max_sessions: usize,
    pub(crate) max_sessions_per_user: usize,
    pub(crate) max_channels: usize,
    pub(crate) max_handles: u64,
    pub(crate) overwrite: Option<OverwriteMode>,
    pub(crate) refuse_setstat: bool,
    /// Pending uploads older than this are aborted.
    pub(crate) partial_retention: Duration,
}

/// What a reload replaces.
pub(crate) struct Live {
    pub(crate) users: Arc<Users>,
    pub(crate) corral: Corral,
}

/// Sessions by user, against the limits.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    by_user: Mutex<HashMap<String, usize>>,
    per_user: usize,
}

impl Sessions {
    /// Counts a session of `user` if the limit allows.
    fn enter(&self, user: &str) -> bool {
        let mut m = self.by_user.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(user.to_owned()).or_default();
        if *n >= self.per_user {
            return false;
        }
        *n += 1;
        true
    }

    fn leave(&self, user: &str) {
        let mut m = self.by_user.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(user);
            }
        }
    }
}

/// When a connection last heard from its client.
#[derive(Debug)]
pub(crate) struct Activity {
    started: Instant,
    last: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            last: AtomicU64::new(0),
        }
    }
    pub(crate) fn touch(&self) {
        self.last
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    fn idle(&self) -> Duration {
        let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }
}

/// The threads that check passwords. An argon2 check holds 19 MiB while it
/// runs: checks run on one thread, in its reused memory, so that a crowd of
/// logins costs 19 MiB once, never 19 MiB per login. A check takes tens of
/// milliseconds: logins wait their turn.
pub(crate) struct PasswordChecks {
    jobs: Mutex<std::sync::mpsc::Sender<Box<dyn FnOnce() + Send>>>,
}

impl PasswordChecks {
    fn start(threads: usize) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<Box<dyn FnOnce() + Send>>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = Arc::clone(&rx);
            let spawned = std::thread::Builder::new()
                .name(format!("corral-passwords-{i}"))
                .spawn(move || {
                    loop {
                        let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start a password-checking thread");
            }
        }
        Self {
            jobs: Mutex::new(tx),
        }
    }

    /// Whether `password` is `user`'s, checked on one of the threads.
    pub(crate) async fn check(&self, users: Arc<Users>, user: String, password: String) -> bool {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Box<dyn FnOnce() + Send> = Box::new(move || {
            let _ = tx.send(users.password_matches(&user, &password));
        });
        let sent = self
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(job);
        sent.is_ok() && rx.await.unwrap_or(false)
    }
}

/// What every connection shares.
pub(crate) struct Server {
    live: RwLock<Arc<Live>>,
    pub(crate) options: Options,
    pub(crate) metrics: Arc<metrics::Metrics>,
    pub(crate) sessions: Sessions,
    pub(crate) failures: Failures,
    pub(crate) checks: PasswordChecks,
    connections: AtomicU64,
    /// When the server started: the time shown for directories whose
    /// backend keeps none.
    pub(crate) started: std::time::SystemTime,
}

impl Server {
    pub(crate) fn live(&self) -> Arc<Live> {
        Arc::clone(&self.live.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Reads the users file and the mappings again; keeps what is in force
    /// if either does not load.
    fn reload(&self) {
        let current = self.live();
        match load(&self.options) {
            Ok((users, config)) => {
                let n = users.len();
                let next = Live {
                    users: Arc::new(users),
                    corral: current.corral.with_mappings(config.mappings),
                };
                *self.live.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
                tracing::info!(
                    users = n,
                    "reloaded the users and the mappings; new logins see them"
                );
            }
            Err(e) => {
                tracing::error!(error = %e, "reload refused; the configuration in force stays");
            }
        }
    }
}

fn load(options: &Options) -> Result<(Users, ConfigFile), Error> {
    let users = Users::load(&options.users)?;
    let config = match &options.config {
        Some(path) => ConfigFile::load(path)?,
        None => {
            ConfigFile::embedded_default(std::path::Path::new(corral::config::DEFAULT_SANDBOX_DIR))?
        }
    };
    Ok((users, config))
}

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

/// Runs the server until the process is stopped.
pub(crate) async fn serve(options: Options) -> Result<(), Error> {
    let (users, config) = load(&options)?;
    let keys = host_key::load_all(&options.host_keys)?;
    let corral = Corral::new(config.mappings, options.cache.clone())?;
    let listener = TcpListener::bind(options.listen).await.map_err(|e| {
        Error::new(
            ErrorKind::Unavailable,
            format!("cannot listen on {}: {e}", options.listen),
        )
    })?;
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
        ..Default::default()
    });
    let metrics = Arc::new(metrics::Metrics::default());
    if let Some(addr) = options.metrics {
        let l = TcpListener::bind(addr).await.map_err(|e| {
            Error::new(
                ErrorKind::Unavailable,
                format!("cannot listen on {addr} for metrics: {e}"),
            )
        })?;
        tokio::spawn(metrics::serve(
            l,
            Arc::clone(&metrics),
            corral.cache().clone(),
        ));
        tracing::info!(%addr, "metrics at http://{addr}/metrics");
    }
    let server = Arc::new(Server {
        live: RwLock::new(Arc::new(Live {
            users: Arc::new(users),
            corral,
        })),
        sessions: Sessions {
            by_user: Mutex::default(),
            per_user: options.max_sessions_per_user,
        },
        options,
        metrics,
        failures: Failures::default(),
        checks: PasswordChecks::start(1),
        connections: AtomicU64::new(0),
        started: std::time::SystemTime::now(),
    });
    {
        // Uploads a killed process left pending: aborted once they are
        // older than the retention, at start and then regularly.
        let server = Arc::clone(&server);
        let retention = server.options.partial_retention;
        tokio::spawn(async move {
            let every = (retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(3600));
            loop {
                let corral = server.live().corral.clone();
                match corral.abort_stale_uploads(retention).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(aborted = n, "aborted stale multipart uploads"),
                    Err(e) => tracing::warn!(error = %e, "cannot look for stale multipart uploads"),
                }
                tokio::time::sleep(every).await;
            }
        });
    }
    {
        let server = Arc::clone(&server);
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| Error::new(ErrorKind::Other, format!("cannot handle SIGHUP: {e}")))?;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                server.reload();
            }
        });
    }
    let c = &server.options.cache;
    tracing::info!(
        listen = %server.options.listen,
        users = server.live().users.len(),
        cache = %corral::human_size(c.total),
        per_user = %corral::human_size(c.per_account()),
        "serving SFTP"
    );
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors, say: wait, never stop serving.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let open = server.connections.fetch_add(1, Ordering::SeqCst);
        if open as usize >= server.options.max_sessions {
            server.connections.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!(%peer, "connection refused: the server has its maximum of sessions");
            drop(tcp);
            continue;
        }
        let (server, config) = (Arc::clone(&server), Arc::clone(&config));
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            // A second handle on the socket, only to see the peer go: russh
            // reads the socket in the same loop that hands data to the
            // channels, and a channel that does not take more (its writes
            // wait for the cache) stops it, so it would not see a killed
            // client until then.
            let (tcp, probe) = match split_probe(tcp) {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "cannot set the connection up");
                    server.connections.fetch_sub(1, Ordering::SeqCst);
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
                    tokio::select! {
                        r = session => if let Err(e) = r {
                            tracing::debug!(%peer, error = %e, "session ended with an error");
                        },
                        () = watchdog => {}
                        () = watch_peer => {}
                    }
                }
                Err(e) => tracing::debug!(%peer, error = %e, "SSH handshake failed"),
            }
            server.connections.fetch_sub(1, Ordering::SeqCst);
        });
    }
}
