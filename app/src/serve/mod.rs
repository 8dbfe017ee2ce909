//! What every front-end that serves users shares (`corral serve sftp`,
//! and the next ones): the users and the mappings in force, reloaded on
//! SIGHUP; password checks with their pace and the per-address lockout;
//! the sessions each user may hold; the transfer log and the metrics
//! endpoint; and the server's chores (uploads left pending). A front-end
//! keeps only its protocol: it asks [`Core`] who may log in, takes a
//! [`SessionSlot`], and gets a user's sandbox from [`Live::corral`].
//!
//! | module | what |
//! |---|---|
//! | [`users`] | the users file: password hashes, authorized keys, `%d`/`%f` values |
//! | [`auth`] | password checks on their own thread, and the lockout of addresses that fail |
//! | [`sessions`] | sessions per user, against the limit, released when dropped |
//! | [`metrics`] | counters, the transfer log, the Prometheus endpoint (on hyper) |
//! | [`listener`] | the listening socket, and the connections against the maximum |

pub(crate) mod auth;
pub(crate) mod listener;
pub(crate) mod metrics;
pub(crate) mod proxy;
pub(crate) mod sessions;
pub(crate) mod users;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use corral::cache::CacheConfig;
use corral::config::ConfigFile;
use corral::source::Source;
use corral::{Corral, Error, ErrorKind, Identity};
use tokio_util::sync::CancellationToken;

use auth::{Failures, PasswordChecks};
use metrics::Metrics;
use sessions::{SessionSlot, Sessions};
use users::Users;

/// What every server takes, whatever its protocol.
#[derive(Debug, Clone)]
pub(crate) struct CoreOptions {
    /// The users file, or `s3://BUCKET/KEY`.
    pub(crate) users: PathBuf,
    /// The mappings (a config file, or bare mappings; or `s3://BUCKET/KEY`);
    /// `None`: the embedded default.
    pub(crate) config: Option<PathBuf>,
    /// The S3 options of `s3://` sources (a JSON file, as a mapping's spec).
    pub(crate) source_options: Option<PathBuf>,
    /// How often the sources are looked at for a new version; `None`:
    /// on SIGHUP only.
    pub(crate) reload_every: Option<Duration>,
    pub(crate) cache: CacheConfig,
    pub(crate) metrics: Option<SocketAddr>,
    pub(crate) max_sessions_per_user: usize,
    /// Pending uploads older than this are aborted.
    pub(crate) partial_retention: Duration,
    /// Balancers whose connections start with a PROXY protocol v2 header
    /// naming the client ([`proxy`]); empty: none is read.
    pub(crate) proxy_from: Vec<IpAddr>,
}

/// What a reload replaces.
pub(crate) struct Live {
    pub(crate) users: Arc<Users>,
    pub(crate) corral: Corral,
}

/// The serving core: one per process, shared by every connection.
pub(crate) struct Core {
    live: RwLock<Arc<Live>>,
    pub(crate) options: CoreOptions,
    pub(crate) metrics: Arc<Metrics>,
    sessions: Sessions,
    failures: Failures,
    checks: PasswordChecks,
    /// When the server started: the time shown for directories whose
    /// backend keeps none.
    pub(crate) started: SystemTime,
    /// Cancelled on SIGTERM or SIGINT: front-ends stop taking connections
    /// and end their sessions; then [`Core::finish`].
    pub(crate) stop: CancellationToken,
    sources: Sources,
}

/// Where the users and the mappings come from.
struct Sources {
    users: Source,
    config: Option<Source>,
    /// The versions last acted on (loaded, or refused): a poll reloads when
    /// either changes.
    seen: std::sync::Mutex<(Option<String>, Option<String>)>,
}

impl Sources {
    fn new(options: &CoreOptions) -> Result<Self, Error> {
        let s3 = options.source_options.as_deref();
        Ok(Self {
            users: Source::new(&options.users, s3)?,
            config: options
                .config
                .as_deref()
                .map(|c| Source::new(c, s3))
                .transpose()?,
            seen: std::sync::Mutex::new((None, None)),
        })
    }

    async fn versions(&self) -> Result<(Option<String>, Option<String>), Error> {
        let users = self.users.version().await?;
        let config = match &self.config {
            Some(c) => c.version().await?,
            None => None,
        };
        Ok((users, config))
    }

    /// Reads and parses both. The versions are recorded once both are
    /// read (a document that does not parse is not read again until it
    /// changes; a source that cannot be reached is).
    async fn load(&self) -> Result<(Users, ConfigFile), Error> {
        let versions = self.versions().await?;
        let users_text = match self.users.local_path() {
            Some(_) => None,
            None => Some(self.users.read().await?.text),
        };
        let config_text = match &self.config {
            Some(c) if c.is_object() => Some(c.read().await?.text),
            _ => None,
        };
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = versions;
        let users = match (users_text, self.users.local_path()) {
            (Some(text), _) => Users::parse(&text, self.users.name(), std::path::Path::new("."))?,
            (None, Some(p)) => Users::load(p)?,
            (None, None) => unreachable!("a source is a file or an object"),
        };
        let config = match (&self.config, config_text) {
            (Some(c), Some(text)) => ConfigFile::parse(&text, c.name())?,
            (Some(c), None) => match c.local_path() {
                Some(p) => ConfigFile::load(p)?,
                None => unreachable!("an object source was read above"),
            },
            (None, _) => ConfigFile::embedded_default(std::path::Path::new(
                corral::config::DEFAULT_SANDBOX_DIR,
            ))?,
        };
        Ok((users, config))
    }
}

impl Core {
    /// Loads the users and the mappings and opens the cache; starts the
    /// metrics endpoint, the reload on SIGHUP and the sweep of uploads left
    /// pending. Must run inside the runtime.
    pub(crate) async fn start(options: CoreOptions) -> Result<Arc<Self>, Error> {
        let sources = Sources::new(&options)?;
        let (users, config) = sources.load().await?;
        // A session that ends mid-upload keeps what is stored, for the
        // client to continue (docs/SERVE.md).
        let corral =
            Corral::new(config.mappings, options.cache.clone())?.keep_partial_uploads(true);
        let metrics = Arc::new(Metrics::default());
        if let Some(addr) = options.metrics {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                Error::new(
                    ErrorKind::Unavailable,
                    format!("cannot listen on {addr} for metrics: {e}"),
                )
            })?;
            tokio::spawn(metrics::serve(
                listener,
                Arc::clone(&metrics),
                corral.cache().clone(),
            ));
            tracing::info!(%addr, "metrics at http://{addr}/metrics");
        }
        let core = Arc::new(Self {
            live: RwLock::new(Arc::new(Live {
                users: Arc::new(users),
                corral,
            })),
            sessions: Sessions::new(options.max_sessions_per_user),
            options,
            metrics,
            failures: Failures::default(),
            checks: PasswordChecks::start(1),
            started: SystemTime::now(),
            stop: CancellationToken::new(),
            sources,
        });
        core.sweep_stale_uploads();
        core.reload_on_hangup()?;
        core.poll_sources();
        core.stop_on_terminate()?;
        Ok(core)
    }

    fn stop_on_terminate(&self) -> Result<(), Error> {
        use tokio::signal::unix::{SignalKind, signal};
        let listen = |kind: SignalKind| {
            signal(kind)
                .map_err(|e| Error::new(ErrorKind::Other, format!("cannot handle a signal: {e}")))
        };
        let (mut term, mut int) = (
            listen(SignalKind::terminate())?,
            listen(SignalKind::interrupt())?,
        );
        let stop = self.stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::info!("stopping: no new sessions; the sessions open end now");
            stop.cancel();
        });
        Ok(())
    }

    /// After the front-end's sessions have ended: waits for the files they
    /// were writing to be given up and their multipart uploads aborted
    /// (bounded), so that a stopped server leaves nothing pending.
    pub(crate) async fn finish(&self) {
        let corral = self.live().corral.clone();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while corral.writes_in_progress() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = corral.cache().settle(Duration::from_secs(20)).await;
        if left > 0 {
            tracing::warn!(
                left,
                "stopped with uploads still being aborted; the next start's sweep aborts them"
            );
        } else {
            tracing::info!("stopped");
        }
    }

    /// The users and mappings in force.
    pub(crate) fn live(&self) -> Arc<Live> {
        Arc::clone(&self.live.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Reads the users and the mappings again; keeps what is in force if
    /// either does not load.
    pub(crate) async fn reload(&self) {
        let current = self.live();
        match self.sources.load().await {
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

    /// Every `reload_every`, the sources' versions: a change reloads.
    fn poll_sources(self: &Arc<Self>) {
        let Some(every) = self.options.reload_every else {
            return;
        };
        let core = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match core.sources.versions().await {
                    Ok(now) => {
                        let changed =
                            *core.sources.seen.lock().unwrap_or_else(|p| p.into_inner()) != now;
                        if changed {
                            tracing::info!("the users or the mappings changed: reloading");
                            core.reload().await;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot look at the users and the mappings")
                    }
                }
            }
        });
    }

    fn reload_on_hangup(self: &Arc<Self>) -> Result<(), Error> {
        let core = Arc::clone(self);
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| Error::new(ErrorKind::Other, format!("cannot handle SIGHUP: {e}")))?;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                core.reload().await;
            }
        });
        Ok(())
    }

    /// Uploads a killed process left pending: aborted once they are older
    /// than the retention, at start and then regularly.
    fn sweep_stale_uploads(self: &Arc<Self>) {
        let core = Arc::clone(self);
        let retention = self.options.partial_retention;
        tokio::spawn(async move {
            let every = (retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(3600));
            loop {
                let corral = core.live().corral.clone();
                match corral.abort_stale_uploads(retention).await {
                    Ok(0) => {}
                    Ok(n) => {
                        core.metrics
                            .stale_aborted
                            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                        tracing::info!(aborted = n, "aborted stale multipart uploads");
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot look for stale multipart uploads"),
                }
                tokio::time::sleep(every).await;
            }
        });
    }

    /// Whether `password` is `user`'s: refused without a check for an
    /// address locked out, counted as a failure when wrong. Checks run on
    /// the core's password thread.
    pub(crate) async fn password_login(
        &self,
        user: &str,
        password: &str,
        from: Option<IpAddr>,
    ) -> bool {
        if self.failures.blocked(from) {
            self.locked_out(user, "password", from);
            return false;
        }
        let users = Arc::clone(&self.live().users);
        let ok = self
            .checks
            .check(users, user.to_owned(), password.to_owned())
            .await;
        if !ok {
            self.failed_login(user, "password", from);
        }
        ok
    }

    /// Whether `key` is one of `user`'s authorized keys (the signature is
    /// the protocol's to check); counted as a failure when not.
    // Public-key logins are SSH's.
    #[cfg_attr(not(feature = "sftp"), allow(dead_code))]
    pub(crate) fn key_login(
        &self,
        user: &str,
        key: &users::PublicKey,
        from: Option<IpAddr>,
    ) -> bool {
        if self.failures.blocked(from) {
            self.locked_out(user, "publickey", from);
            return false;
        }
        let ok = self.live().users.key_matches(user, key);
        if !ok {
            self.failed_login(user, "publickey", from);
        }
        ok
    }

    /// Whether `key` is worth a signature (no failure counted).
    // Public-key logins are SSH's.
    #[cfg_attr(not(feature = "sftp"), allow(dead_code))]
    pub(crate) fn key_known(&self, user: &str, key: &users::PublicKey) -> bool {
        self.live().users.key_matches(user, key)
    }

    /// A login refused without a check: the address failed too often
    /// lately. Counted as failed; the window is not extended.
    fn locked_out(&self, user: &str, method: &str, from: Option<IpAddr>) {
        self.metrics.failed_login();
        tracing::warn!(
            user,
            peer = ?from,
            method,
            "login refused: the address is locked out after {} failed logins in {} s",
            auth::MAX_FAILURES,
            auth::WINDOW.as_secs()
        );
    }

    fn failed_login(&self, user: &str, method: &str, from: Option<IpAddr>) {
        self.metrics.failed_login();
        self.failures.failed(from);
        tracing::info!(user, peer = ?from, method, "login failed");
    }

    /// A session of `user`, if the limit allows; counted until dropped.
    pub(crate) fn open_session(&self, user: &str, from: Option<SocketAddr>) -> Option<SessionSlot> {
        let slot = self.sessions.enter(user, Arc::clone(&self.metrics), from);
        if slot.is_none() {
            tracing::warn!(user, peer = ?from, "login refused: too many sessions for this user");
        }
        slot
    }

    /// `user`'s identity and sandbox, their own File sandboxes made first
    /// where a template names them.
    pub(crate) fn sandbox(&self, user: &str) -> Result<corral::UserSandbox, Error> {
        let live = self.live();
        let identity: Identity = live
            .users
            .identity(user)
            .ok_or_else(|| Error::not_found(format!("no user {user:?}")))?;
        match live.corral.create_user_roots(&identity) {
            Ok(made) => {
                for dir in made {
                    tracing::info!(user, dir, "made the user's File sandbox");
                }
            }
            Err(e) => tracing::warn!(user, error = %e, "cannot make the user's File sandbox"),
        }
        live.corral.sandbox(&identity)
    }
}
