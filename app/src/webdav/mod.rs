//! `corral serve webdav`: a WebDAV server that shows each user their
//! sandbox. A driving adapter: the WebDAV methods and their XML are
//! dav-server's, every filesystem rule and operation the `corral`
//! library's, and users, logins, sessions, metrics and reload the serving
//! core's ([`crate::serve`]); this folder holds HTTP, TLS and the
//! translation.
//!
//! | module | what |
//! |---|---|
//! | [`fs`] | dav-server's filesystem trait as library calls, one per method |
//! | [`props`] | dead properties (PROPPATCH), per user, in this process |
//!
//! A connection is a session: its first request's credentials are checked
//! (argon2, on the core's password thread) and remembered for the
//! connection, so that a client's next requests on it cost no hash. Each
//! user has their own lock table and properties: one user's LOCK never
//! stands in another's way.

mod fs;
mod props;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corral::{Error, ErrorKind};
use dav_server::DavHandler;
use dav_server::body::Body;
use dav_server::ls::DavLockSystem;
use dav_server::memls::MemLs;
use headers::authorization::Basic;
use headers::{Authorization, HeaderMapExt};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::serve::listener::Listener;
use crate::serve::sessions::SessionSlot;
use crate::serve::{Core, CoreOptions, proxy};
use fs::SandboxFs;
use props::Props;

/// Bytes per read of a GET: the size of the body's frames.
const READ_BUF: usize = 256 << 10;

/// How long a request's headers may take to arrive.
const HEADER_TIMEOUT: Duration = Duration::from_secs(20);

/// The largest PROPPATCH body read (dav-server's own limit on XML bodies).
const MAX_PROPPATCH: usize = 65_536;

/// A COPY or MOVE whose `Destination` names another server: 502, as RFC
/// 4918 says (dav-server would take its path on this one).
fn foreign_destination<B>(req: &Request<B>) -> Option<Response<Body>> {
    if !matches!(req.method().as_str(), "COPY" | "MOVE") {
        return None;
    }
    let dest = req.headers().get("destination")?.to_str().ok()?;
    let uri: hyper::Uri = dest.parse().ok()?;
    let authority = uri.authority()?.as_str();
    let host = req
        .headers()
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok());
    if host.is_some_and(|h| h.eq_ignore_ascii_case(authority)) {
        return None;
    }
    Some(answer(
        StatusCode::BAD_GATEWAY,
        "the Destination is on another server: copy and move stay on this one",
    ))
}

/// The time of a `Win32LastModifiedTime` element in a PROPPATCH body (an
/// HTTP date, as Windows writes it).
fn win32_modified(body: &[u8]) -> Option<std::time::SystemTime> {
    let text = std::str::from_utf8(body).ok()?;
    let at = text.find("Win32LastModifiedTime")?;
    let rest = &text[at..];
    let value = &rest[rest.find('>')? + 1..];
    let value = &value[..value.find('<')?];
    httpdate::parse_http_date(value.trim()).ok()
}

/// What `corral serve webdav` takes.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) core: CoreOptions,
    pub(crate) listen: SocketAddr,
    /// The certificate chain and its key (PEM files): HTTPS.
    pub(crate) tls: Option<(PathBuf, PathBuf)>,
    /// Plain HTTP elsewhere than on loopback.
    pub(crate) allow_insecure: bool,
    pub(crate) max_connections: usize,
    pub(crate) idle_timeout: Duration,
}

/// What every connection shares.
struct Server {
    core: Arc<Core>,
    options: Options,
    /// Each user's locks and properties, shared by their connections.
    users: Mutex<HashMap<String, Arc<UserState>>>,
}

struct UserState {
    locks: Box<MemLs>,
    props: Arc<Props>,
}

impl Server {
    fn user_state(&self, user: &str) -> Arc<UserState> {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(users.entry(user.to_owned()).or_insert_with(|| {
            Arc::new(UserState {
                locks: MemLs::new(),
                props: Arc::new(Props::default()),
            })
        }))
    }
}

fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, Error> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &std::path::Path, e: &dyn std::fmt::Display| {
        Error::new(
            ErrorKind::InvalidInput,
            format!("--tls-cert/--tls-key: cannot read {}: {e}", what.display()),
        )
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad(cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(cert, &e))?;
    if chain.is_empty() {
        return Err(bad(cert, &"no certificate in it"));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, &e))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(cert, &e))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| bad(key, &e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Runs the server until SIGTERM or SIGINT, then stops cleanly: no new
/// connection, the requests in progress given a moment, unfinished PUTs
/// given up.
pub(crate) async fn serve(options: Options) -> Result<(), Error> {
    if options.tls.is_none() && !options.listen.ip().is_loopback() && !options.allow_insecure {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "--listen {}: plain HTTP would send passwords in the clear; give --tls-cert and --tls-key (or --allow-insecure)",
                options.listen
            ),
        ));
    }
    let tls = match &options.tls {
        Some((cert, key)) => Some(tls_acceptor(cert, key)?),
        None => None,
    };
    let core = Core::start(options.core.clone()).await?;
    let listener = Listener::bind(options.listen, options.max_connections, "connections").await?;
    let server = Arc::new(Server {
        core,
        options,
        users: Mutex::new(HashMap::new()),
    });
    let c = &server.options.core.cache;
    tracing::info!(
        listen = %server.options.listen,
        tls = tls.is_some(),
        users = server.core.live().users.len(),
        cache = %corral::human_size(c.total),
        per_user = %corral::human_size(c.per_account()),
        "serving WebDAV at {}://{}/",
        if tls.is_some() { "https" } else { "http" },
        server.options.listen
    );
    while let Some((mut tcp, peer, slot)) = listener.next(&server.core.stop).await {
        let (server, tls) = (Arc::clone(&server), tls.clone());
        tokio::spawn(async move {
            // Held until the connection ends.
            let _slot = slot;
            let _ = tcp.set_nodelay(true);
            match proxy::client_address(&mut tcp, peer, &server.core.options.proxy_from).await {
                Ok(peer) => match tls {
                    Some(acceptor) => {
                        match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp))
                            .await
                        {
                            Ok(Ok(stream)) => connection(Arc::clone(&server), stream, peer).await,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed")
                            }
                            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                        }
                    }
                    None => connection(Arc::clone(&server), tcp, peer).await,
                },
                Err(e) => tracing::warn!(%peer, "connection refused: {e}"),
            }
        });
    }
    listener.drain().await;
    server.core.finish().await;
    Ok(())
}

/// Serves one connection's requests, until the client closes it, it stays
/// idle too long, or the server stops.
async fn connection<I>(server: Arc<Server>, io: I, peer: SocketAddr)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = Arc::new(Conn {
        server: Arc::clone(&server),
        peer,
        login: tokio::sync::Mutex::new(None),
        busy: AtomicUsize::new(0),
        last: Mutex::new(Instant::now()),
    });
    let service = {
        let conn = Arc::clone(&conn);
        hyper::service::service_fn(move |req| {
            let conn = Arc::clone(&conn);
            async move { Ok::<_, Infallible>(conn.handle(req).await) }
        })
    };
    // A client that sends its headers slowly (or not at all) holds a
    // connection of the server's maximum: it gets this long for them.
    let http = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(hyper_util::rt::TokioIo::new(io), service);
    let mut http = std::pin::pin!(http);
    let idle = server.options.idle_timeout;
    let mut closing = false;
    loop {
        tokio::select! {
            r = http.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                break;
            }
            () = server.core.stop.cancelled(), if !closing => {
                // The request in progress ends; then the connection.
                closing = true;
                http.as_mut().graceful_shutdown();
            }
            () = tokio::time::sleep(Duration::from_secs(1).min(idle)), if !closing => {
                if conn.idle() >= idle {
                    tracing::debug!(%peer, "idle timeout: closing the connection");
                    closing = true;
                    http.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// One connection: who logged in on it, and whether it is busy.
struct Conn {
    server: Arc<Server>,
    peer: SocketAddr,
    login: tokio::sync::Mutex<Option<Login>>,
    busy: AtomicUsize,
    last: Mutex<Instant>,
}

/// The credentials checked on a connection, and what they open.
struct Login {
    user: String,
    password: String,
    fs: SandboxFs,
    locks: Box<MemLs>,
    /// Counted against the user's sessions while the connection lasts.
    _slot: SessionSlot,
}

/// Whether `a` and `b` are equal, in a time that does not tell where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn answer(status: StatusCode, text: &str) -> Response<Body> {
    let mut r = Response::new(Body::from(format!("{text}\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn challenge() -> Response<Body> {
    let mut r = answer(
        StatusCode::UNAUTHORIZED,
        "a user name and password are needed",
    );
    r.headers_mut().insert(
        hyper::header::WWW_AUTHENTICATE,
        hyper::header::HeaderValue::from_static("Basic realm=\"corral\", charset=\"UTF-8\""),
    );
    r
}

/// Marks the connection busy while a request runs.
struct Busy<'a>(&'a Conn);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        *self.0.last.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Conn {
    fn idle(&self) -> Duration {
        if self.busy.load(Ordering::SeqCst) > 0 {
            return Duration::ZERO;
        }
        self.last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        self.busy.fetch_add(1, Ordering::SeqCst);
        let _busy = Busy(self);
        let Some(Authorization(basic)) = req.headers().typed_get::<Authorization<Basic>>() else {
            return challenge();
        };
        let (fs, locks, user) = match self.login(basic.username(), basic.password()).await {
            Ok(x) => x,
            Err(r) => return r,
        };
        if let Some(r) = foreign_destination(&req) {
            return r;
        }
        let handler = DavHandler::builder()
            .filesystem(Box::new(fs.clone()))
            .locksystem(locks)
            .principal(user)
            .read_buf_size(READ_BUF)
            .build_handler();
        if req.method().as_str() != "PROPPATCH" {
            return handler.handle(req).await;
        }
        // Windows sets a file's time with a PROPPATCH of
        // Win32LastModifiedTime, which dav-server answers without doing:
        // the time is read here and given to the library.
        let (parts, body) = req.into_parts();
        let body = match http_body_util::BodyExt::collect(http_body_util::Limited::new(
            body,
            MAX_PROPPATCH,
        ))
        .await
        {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return answer(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("a PROPPATCH body is limited to {MAX_PROPPATCH} bytes"),
                );
            }
        };
        let time = win32_modified(&body);
        let path = dav_server::davpath::DavPath::from_uri(&parts.uri).ok();
        let req = Request::from_parts(parts, http_body_util::Full::new(body));
        let response = handler.handle(req).await;
        if let (Some(time), Some(path), StatusCode::MULTI_STATUS) = (time, path, response.status())
            && let Ok(vp) = fs::virtual_path(&path)
            && let Err(e) = fs.sandbox.set_modified(&vp, time).await
        {
            tracing::debug!(user = %fs.user, path = %vp, error = %e, "the Win32 time was not kept");
        }
        response
    }

    /// The connection's login, checked again only if the credentials change.
    async fn login(
        &self,
        user: &str,
        password: &str,
    ) -> Result<(SandboxFs, Box<dyn DavLockSystem>, String), Response<Body>> {
        let mut login = self.login.lock().await;
        if let Some(l) = login.as_ref()
            && l.user == user
            && same(&l.password, password)
        {
            return Ok((l.fs.clone(), l.locks.clone(), l.user.clone()));
        }
        // Another user on the same connection starts another session.
        *login = None;
        let core = &self.server.core;
        if !core
            .password_login(user, password, Some(self.peer.ip()))
            .await
        {
            return Err(challenge());
        }
        let Some(slot) = core.open_session(user, Some(self.peer)) else {
            return Err(answer(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many connections for this user: close some and try again",
            ));
        };
        let sandbox = match core.sandbox(user) {
            Ok(sb) => sb,
            Err(e) => {
                tracing::warn!(user, error = %e, "login refused: no sandbox");
                return Err(answer(
                    StatusCode::FORBIDDEN,
                    "this user has no sandbox here: ask the administrator",
                ));
            }
        };
        let state = self.server.user_state(user);
        let fs = SandboxFs {
            sandbox,
            user: Arc::from(user),
            peer: self.peer,
            metrics: Arc::clone(&core.metrics),
            props: Arc::clone(&state.props),
            started: core.started,
        };
        let l = Login {
            user: user.to_owned(),
            password: password.to_owned(),
            fs,
            locks: state.locks.clone(),
            _slot: slot,
        };
        let out = (
            l.fs.clone(),
            l.locks.clone() as Box<dyn DavLockSystem>,
            l.user.clone(),
        );
        *login = Some(l);
        Ok(out)
    }
}
