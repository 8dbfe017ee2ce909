//! Real servers for tests, started on 127.0.0.1 and stopped on drop.
//!
//! - [`Pki`]: a throwaway CA and a `127.0.0.1`/`localhost` server certificate made with `openssl`.
//! - [`S3Server`]: s3s-fs (verifies SigV4) or moto (accepts any credentials), over http or https.
//! - [`Squid`]: an HTTP proxy with Basic auth, listening with plain http and with TLS.
//!
//! Everything here is synchronous and uses only `std` and `tempfile`. A missing tool
//! is a test failure (a panic that says how to install it), never a skip. See
//! `tests/SERVERS.md` and `scripts/install-test-deps.sh`.

use std::env;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long a server may take to answer after it was started.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a stopping squid gets between SIGTERM and SIGKILL.
const SQUID_STOP_GRACE: Duration = Duration::from_secs(2);
/// SHA-256 of the empty payload, required by s3s-fs for a signed bodiless request.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
/// Access key of every [`S3Server`] (s3s-fs checks it; moto accepts anything).
const S3_ACCESS_KEY: &str = "AKIACORRALTEST000001";
/// Secret key of every [`S3Server`].
const S3_SECRET_KEY: &str = "corral-test-secret-key";
/// Region of every [`S3Server`].
const S3_REGION: &str = "us-east-1";
/// Squid's Basic-auth helper, shipped by Debian's `squid` package.
const SQUID_BASIC_AUTH: &str = "/usr/lib/squid/basic_ncsa_auth";
/// Proxy variables a child must not inherit: every target is on loopback.
const PROXY_VARS: [&str; 6] = [
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
];
const INSTALL_HINT: &str = "run scripts/install-test-deps.sh";

/// Returns a TCP port that was free on 127.0.0.1 a moment ago (bind to port 0, read it back).
///
/// # Panics
///
/// If 127.0.0.1 cannot be bound.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .expect("cannot bind 127.0.0.1:0 to pick a free port");
    listener
        .local_addr()
        .expect("cannot read the address of a bound listener")
        .port()
}

// ---------------------------------------------------------------- tools

fn tools_dir() -> PathBuf {
    if let Some(dir) = env::var_os("CORRAL_TOOLS") {
        return PathBuf::from(dir);
    }
    let home = env::var_os("HOME").expect("neither CORRAL_TOOLS nor HOME is set");
    PathBuf::from(home).join(".cache").join("corral-tools")
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The binary named by `var`, or `default`; panics if it is not an executable file.
fn tool(name: &str, var: &str, default: PathBuf) -> PathBuf {
    let path = env::var_os(var).map_or(default, PathBuf::from);
    assert!(
        is_executable(&path),
        "{name} not found at {} (set {var} to override): {INSTALL_HINT}",
        path.display()
    );
    path
}

fn s3s_fs_bin() -> PathBuf {
    tool(
        "s3s-fs",
        "CORRAL_S3S_FS",
        tools_dir().join("s3s-fs").join("bin").join("s3s-fs"),
    )
}

fn moto_server_bin() -> PathBuf {
    tool(
        "moto_server",
        "CORRAL_MOTO_SERVER",
        tools_dir()
            .join("moto-venv")
            .join("bin")
            .join("moto_server"),
    )
}

fn squid_bin() -> PathBuf {
    tool("squid", "CORRAL_SQUID", PathBuf::from("/usr/sbin/squid"))
}

/// A command whose environment routes nothing through a proxy.
fn command(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    for var in PROXY_VARS {
        cmd.env_remove(var);
    }
    cmd.env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .stdin(Stdio::null());
    cmd
}

/// `curl` that ignores `~/.curlrc` and every proxy setting.
fn curl() -> Command {
    let mut cmd = command("curl");
    cmd.args(["-q", "--noproxy", "*", "--silent", "--show-error"]);
    cmd
}

/// Runs `cmd` to completion and returns its stdout; panics (with stderr) on failure.
fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!(
            "{what}: cannot run {:?}: {e}: {INSTALL_HINT}",
            cmd.get_program()
        )
    });
    assert!(
        out.status.success(),
        "{what} failed ({}): {cmd:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Starts `cmd` with stdout and stderr appended to `log`.
fn spawn_logged(cmd: &mut Command, log: &Path, what: &str) -> Child {
    let out = File::create(log)
        .unwrap_or_else(|e| panic!("cannot create {what}'s log {}: {e}", log.display()));
    let err = out.try_clone().expect("cannot duplicate a log file handle");
    cmd.stdout(out).stderr(err).spawn().unwrap_or_else(|e| {
        panic!(
            "cannot start {what} ({:?}): {e}: {INSTALL_HINT}",
            cmd.get_program()
        )
    })
}

fn read_lossy(path: &Path) -> String {
    match fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) if e.kind() == ErrorKind::NotFound => String::new(),
        Err(e) => panic!("cannot read {}: {e}", path.display()),
    }
}

/// The last few KiB of each log, labelled, for panic messages.
fn tails(logs: &[&Path]) -> String {
    const MAX: usize = 4000;
    let mut out = String::new();
    for log in logs {
        let text = read_lossy(log);
        let mut start = text.len().saturating_sub(MAX);
        while !text.is_char_boundary(start) {
            start += 1;
        }
        out.push_str(&format!(
            "--- {} (tail)\n{}\n",
            log.display(),
            &text[start..]
        ));
    }
    out
}

/// Polls `ready` until it holds; panics with the logs if the child exits or time runs out.
fn wait_ready(child: &mut Child, what: &str, logs: &[&Path], mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().expect("cannot poll a child process") {
            panic!("{what} exited during startup ({status}):\n{}", tails(logs));
        }
        if ready() {
            return;
        }
        if Instant::now() >= deadline {
            // Best effort: the panic below is the report.
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} did not become ready within {READY_TIMEOUT:?}:\n{}",
                tails(logs)
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

fn accepts_connections(port: u16) -> bool {
    TcpStream::connect_timeout(&loopback(port), Duration::from_millis(500)).is_ok()
}

/// Whether a plain-HTTP server on `port` answers a request with any status.
fn answers_http(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&loopback(port), Duration::from_millis(500))
    else {
        return false;
    };
    if stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .is_err()
        || stream
            .write_all(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .is_err()
    {
        return false;
    }
    let mut head = [0_u8; 5];
    stream.read_exact(&mut head).is_ok() && &head == b"HTTP/"
}

/// Whether an https server on `port` completes a handshake trusted by `ca_file` and answers.
fn answers_https(port: u16, ca_file: &Path) -> bool {
    curl()
        .args(["--max-time", "2", "-o", "/dev/null", "--cacert"])
        .arg(ca_file)
        .arg(format!("https://127.0.0.1:{port}/"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn copy(from: &Path, to: &Path) {
    fs::copy(from, to)
        .unwrap_or_else(|e| panic!("cannot copy {} to {}: {e}", from.display(), to.display()));
}

fn write(path: &Path, contents: &str) {
    fs::write(path, contents).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

fn temp_dir(prefix: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("cannot create a temporary directory")
}

// ---------------------------------------------------------------- PKI

/// openssl configuration for [`Pki::generate`].
const PKI_CONFIG: &str = "\
[req]
distinguished_name = dn
prompt = no

[dn]
CN = corral test CA

[ca_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash

[leaf_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1,DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid,issuer
";

/// A throwaway PKI: a CA and a server certificate for `127.0.0.1` and `localhost` signed by it.
///
/// EC P-256 keys, valid from the moment of creation for 30 days; the leaf is not a CA and
/// carries `subjectAltName=IP:127.0.0.1,DNS:localhost` and `extendedKeyUsage=serverAuth`,
/// as rustls/webpki require. Everything lives in [`Pki::dir`], removed on drop.
#[derive(Debug)]
pub struct Pki {
    /// The directory holding every file below (and the CA's private key, `ca.key`).
    pub dir: TempDir,
    /// The CA certificate (PEM): the trust anchor to give clients.
    pub ca_file: PathBuf,
    /// A hashed CA directory (like `SSL_CERT_DIR`): `ca.pem` and its `<hash>.0` symlink.
    pub ca_dir: PathBuf,
    /// The server (leaf) certificate (PEM), signed by the CA.
    pub cert: PathBuf,
    /// The server's private key (PEM, PKCS#8).
    pub key: PathBuf,
}

impl Pki {
    /// Generates a fresh CA and server certificate with `openssl`, and checks the chain
    /// with `openssl verify -purpose sslserver`.
    ///
    /// # Panics
    ///
    /// If `openssl` is missing or fails.
    pub fn generate() -> Pki {
        let dir = temp_dir("corral-pki-");
        let path = dir.path().to_path_buf();
        let openssl =
            |args: &[&str], what: &str| run(command("openssl").args(args).current_dir(&path), what);
        write(&path.join("pki.cnf"), PKI_CONFIG);
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];

        let mut args = vec![
            "req",
            "-x509",
            "-config",
            "pki.cnf",
            "-extensions",
            "ca_ext",
        ];
        args.extend(ec);
        args.extend(["-keyout", "ca.key", "-out", "ca.pem", "-days", "30"]);
        // A distinct CA name per Pki: a client trusting another Pki's CA then fails with
        // `UnknownIssuer` rather than `BadSignature` (webpki looks issuers up by name).
        let tag = path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let ca_subject = format!("/CN=corral test CA {tag}");
        args.extend(["-subj", ca_subject.as_str()]);
        openssl(&args, "openssl: making the test CA");

        let mut args = vec!["req", "-new", "-config", "pki.cnf"];
        args.extend(ec);
        args.extend([
            "-keyout",
            "key.pem",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=localhost",
        ]);
        openssl(&args, "openssl: making the server key");

        openssl(
            &[
                "x509",
                "-req",
                "-in",
                "leaf.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "30",
                "-extfile",
                "pki.cnf",
                "-extensions",
                "leaf_ext",
                "-out",
                "cert.pem",
            ],
            "openssl: signing the server certificate",
        );
        openssl(
            &[
                "verify",
                "-purpose",
                "sslserver",
                "-CAfile",
                "ca.pem",
                "cert.pem",
            ],
            "openssl: verifying the server certificate",
        );

        let ca_dir = path.join("ca-dir");
        fs::create_dir(&ca_dir).expect("cannot create the hashed CA directory");
        copy(&path.join("ca.pem"), &ca_dir.join("ca.pem"));
        hash_ca_dir(&ca_dir);

        Pki {
            ca_file: path.join("ca.pem"),
            ca_dir,
            cert: path.join("cert.pem"),
            key: path.join("key.pem"),
            dir,
        }
    }

    /// The CA certificate as PEM text (what `with_proxy_ca_certificate` and friends take).
    pub fn ca_pem(&self) -> String {
        read_lossy(&self.ca_file)
    }
}

/// `openssl rehash DIR`, or the `<hash>.0` symlink made by hand where `rehash` is missing.
fn hash_ca_dir(ca_dir: &Path) {
    let rehashed = command("openssl")
        .arg("rehash")
        .arg(ca_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let has_link = |dir: &Path| {
        fs::read_dir(dir)
            .expect("cannot list the hashed CA directory")
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().ends_with(".0"))
    };
    if rehashed && has_link(ca_dir) {
        return;
    }
    let hash = run(
        command("openssl")
            .args(["x509", "-hash", "-noout", "-in"])
            .arg(ca_dir.join("ca.pem")),
        "openssl x509 -hash",
    );
    let link = ca_dir.join(format!("{}.0", hash.trim()));
    std::os::unix::fs::symlink("ca.pem", &link)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", link.display()));
}

// ---------------------------------------------------------------- S3

/// Which S3 server an [`S3Server`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S3Kind {
    /// s3s-fs 0.14.1: objects are files under a temporary root; verifies SigV4.
    S3sFs,
    /// moto 5.2.5 (`moto_server`): in memory; accepts any credentials.
    Moto,
}

/// A real S3 server on 127.0.0.1, killed (and its files removed) on drop.
///
/// Path-style addressing, region `us-east-1`. State starts empty: create buckets with
/// [`S3Server::create_bucket`] after each start.
#[derive(Debug)]
pub struct S3Server {
    /// Which server this is.
    pub kind: S3Kind,
    /// Base URL without a trailing slash: `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT`.
    pub endpoint: String,
    /// The TCP port it listens on (127.0.0.1 only).
    pub port: u16,
    /// Access key to sign requests with.
    pub access_key: String,
    /// Secret key to sign requests with (s3s-fs rejects any other with 403).
    pub secret_key: String,
    /// Region to sign requests for: `us-east-1`.
    pub region: String,
    /// The CA that signed the server's certificate, when it serves https.
    ca_file: Option<PathBuf>,
    log_file: PathBuf,
    child: Child,
    dir: TempDir,
}

impl S3Server {
    /// Starts s3s-fs on a free port with a fresh, empty root directory and fixed keys.
    ///
    /// # Panics
    ///
    /// If s3s-fs is missing (see `scripts/install-test-deps.sh`), dies or does not answer.
    pub fn s3s_fs() -> S3Server {
        let bin = s3s_fs_bin();
        let dir = temp_dir("corral-s3s-fs-");
        let root = dir.path().join("data");
        fs::create_dir(&root).expect("cannot create s3s-fs's root directory");
        let port = free_port();
        let mut cmd = command(&bin);
        cmd.arg("--host")
            .arg("127.0.0.1")
            .arg("--port")
            .arg(port.to_string())
            .arg("--access-key")
            .arg(S3_ACCESS_KEY)
            .arg("--secret-key")
            .arg(S3_SECRET_KEY)
            .arg(&root)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1");
        Self::start(S3Kind::S3sFs, cmd, dir, port, None)
    }

    /// Starts moto (`moto_server`) over plain http on a free port.
    ///
    /// # Panics
    ///
    /// If moto is missing (see `scripts/install-test-deps.sh`), dies or does not answer.
    pub fn moto() -> S3Server {
        let dir = temp_dir("corral-moto-");
        let port = free_port();
        let cmd = moto_command(port);
        Self::start(S3Kind::Moto, cmd, dir, port, None)
    }

    /// Starts moto serving https with `pki`'s server certificate (endpoint `https://…`).
    ///
    /// The certificate, key and CA are copied, so `pki` may be dropped first.
    ///
    /// # Panics
    ///
    /// If moto is missing (see `scripts/install-test-deps.sh`), dies or does not answer.
    pub fn moto_tls(pki: &Pki) -> S3Server {
        let dir = temp_dir("corral-moto-tls-");
        let (cert, key, ca) = (
            dir.path().join("cert.pem"),
            dir.path().join("key.pem"),
            dir.path().join("ca.pem"),
        );
        copy(&pki.cert, &cert);
        copy(&pki.key, &key);
        copy(&pki.ca_file, &ca);
        let port = free_port();
        let mut cmd = moto_command(port);
        cmd.arg("-s").arg("-c").arg(&cert).arg("-k").arg(&key);
        Self::start(S3Kind::Moto, cmd, dir, port, Some(ca))
    }

    fn start(
        kind: S3Kind,
        mut cmd: Command,
        dir: TempDir,
        port: u16,
        ca_file: Option<PathBuf>,
    ) -> S3Server {
        let what = match kind {
            S3Kind::S3sFs => "s3s-fs",
            S3Kind::Moto => "moto_server",
        };
        let log_file = dir.path().join("server.log");
        let mut child = spawn_logged(&mut cmd, &log_file, what);
        let scheme = if ca_file.is_some() { "https" } else { "http" };
        wait_ready(&mut child, what, &[&log_file], || match &ca_file {
            Some(ca) => accepts_connections(port) && answers_https(port, ca),
            None => answers_http(port),
        });
        S3Server {
            kind,
            endpoint: format!("{scheme}://127.0.0.1:{port}"),
            port,
            access_key: S3_ACCESS_KEY.to_owned(),
            secret_key: S3_SECRET_KEY.to_owned(),
            region: S3_REGION.to_owned(),
            ca_file,
            log_file,
            child,
            dir,
        }
    }

    /// Creates bucket `name` (at least 3 characters) with a SigV4-signed `PUT /name` made by curl.
    ///
    /// # Panics
    ///
    /// If the server does not answer 200.
    pub fn create_bucket(&self, name: &str) {
        let mut cmd = curl();
        cmd.args(["-X", "PUT", "-H"])
            .arg(format!("x-amz-content-sha256: {EMPTY_SHA256}"))
            .arg("--aws-sigv4")
            .arg(format!("aws:amz:{}:s3", self.region))
            .arg("--user")
            .arg(format!("{}:{}", self.access_key, self.secret_key))
            .args(["-w", "\n%{http_code}"]);
        if let Some(ca) = &self.ca_file {
            cmd.arg("--cacert").arg(ca);
        }
        cmd.arg(format!("{}/{name}", self.endpoint));
        let out = run(&mut cmd, "curl: creating a bucket");
        let (body, code) = out.rsplit_once('\n').unwrap_or(("", out.as_str()));
        assert!(
            code == "200",
            "creating bucket {name} on {} answered {code}: {body}\n{}",
            self.endpoint,
            tails(&[&self.log_file])
        );
    }

    /// The server's stdout and stderr so far.
    pub fn log(&self) -> String {
        read_lossy(&self.log_file)
    }

    /// The temporary directory holding the log (and, for s3s-fs, the data under `data/`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn moto_command(port: u16) -> Command {
    let mut cmd = command(moto_server_bin());
    cmd.args(["-H", "127.0.0.1", "-p"])
        .arg(port.to_string())
        .env("PYTHONUNBUFFERED", "1");
    cmd
}

impl Drop for S3Server {
    fn drop(&mut self) {
        // Best effort: the child may already have exited.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- squid

/// A real squid proxy on 127.0.0.1 requiring Basic auth, stopped on drop.
///
/// One plain-http port and one https port (TLS to the proxy, with the [`Pki`] server
/// certificate). Authenticated clients on localhost may forward plain http and `CONNECT`
/// to any port; everything else is denied (407 without or with wrong credentials).
/// Nothing is cached. Several instances can run at once.
#[derive(Debug)]
pub struct Squid {
    /// Plain-http proxy port (`http://127.0.0.1:PORT`).
    pub http_port: u16,
    /// TLS proxy port (`https://127.0.0.1:PORT`), certificate from the [`Pki`].
    pub https_port: u16,
    /// Basic-auth user name (URL-safe).
    pub user: String,
    /// Basic-auth password (URL-safe).
    pub password: String,
    service_name: String,
    access_log: PathBuf,
    cache_log: PathBuf,
    out_log: PathBuf,
    child: Child,
    dir: TempDir,
}

impl Squid {
    /// Starts squid in the foreground (`squid -N -n NAME -f CONF`) with a fresh config,
    /// password file and logs in a temporary directory.
    ///
    /// # Panics
    ///
    /// If squid or openssl is missing (see `scripts/install-test-deps.sh`), squid dies or its
    /// ports do not open.
    pub fn start(pki: &Pki) -> Squid {
        let bin = squid_bin();
        assert!(
            is_executable(Path::new(SQUID_BASIC_AUTH)),
            "squid's Basic auth helper not found at {SQUID_BASIC_AUTH}: {INSTALL_HINT}"
        );
        let dir = temp_dir("corral-squid-");
        let path = dir.path();
        let (user, password) = ("corral".to_owned(), "proxy-pass-7Qx".to_owned());
        let http_port = free_port();
        let https_port = loop {
            let port = free_port();
            if port != http_port {
                break port;
            }
        };
        // squid wants an alphanumeric service name; it names the /dev/shm segments.
        let service_name = format!("corral{http_port}");

        let hash = run(
            command("openssl").args(["passwd", "-apr1", &password]),
            "openssl passwd",
        );
        let passwd = path.join("passwd");
        write(&passwd, &format!("{user}:{}\n", hash.trim()));
        let (cert, key) = (path.join("cert.pem"), path.join("key.pem"));
        copy(&pki.cert, &cert);
        copy(&pki.key, &key);
        let access_log = path.join("access.log");
        let cache_log = path.join("cache.log");
        let out_log = path.join("squid.out");
        let as_root = fs::metadata(path)
            .expect("cannot stat squid's directory")
            .uid()
            == 0;
        let d = path.display();
        let mut conf = format!(
            "http_port 127.0.0.1:{http_port}\n\
             https_port 127.0.0.1:{https_port} tls-cert={} tls-key={}\n\
             visible_hostname corral-test-squid\n\
             auth_param basic program {SQUID_BASIC_AUTH} {}\n\
             auth_param basic realm corral-test\n\
             acl authed proxy_auth REQUIRED\n\
             http_access allow localhost authed\n\
             http_access deny all\n\
             cache deny all\n\
             cache_mem 8 MB\n\
             max_filedescriptors 1024\n\
             access_log stdio:{}\n\
             cache_log {}\n\
             cache_store_log none\n\
             pid_filename {d}/squid.pid\n\
             coredump_dir {d}\n\
             netdb_filename none\n\
             pinger_enable off\n\
             logfile_rotate 0\n\
             shutdown_lifetime 1 second\n",
            cert.display(),
            key.display(),
            passwd.display(),
            access_log.display(),
            cache_log.display(),
        );
        if as_root {
            conf.push_str("cache_effective_user proxy\n");
        }
        let conf_file = path.join("squid.conf");
        write(&conf_file, &conf);
        if as_root {
            // squid drops root for `proxy`: it must own its files.
            run(
                command("chown").args(["-R", "proxy:proxy"]).arg(path),
                "chown -R proxy:proxy (squid's directory)",
            );
        }

        let mut cmd = command(&bin);
        cmd.args(["-N", "-n", &service_name, "-f"]).arg(&conf_file);
        let mut child = spawn_logged(&mut cmd, &out_log, "squid");
        // Ready once both ports listen. squid says so in its cache log; probing the ports
        // would add `NONE_NONE/000 error:transaction-end-before-headers` access-log lines.
        let listening = [http_port, https_port].map(|p| format!(" local=127.0.0.1:{p} "));
        wait_ready(&mut child, "squid", &[&out_log, &cache_log], || {
            let log = read_lossy(&cache_log);
            listening.iter().all(|l| log.contains(l.as_str()))
        });
        Squid {
            http_port,
            https_port,
            user,
            password,
            service_name,
            access_log,
            cache_log,
            out_log,
            child,
            dir,
        }
    }

    /// The proxy URL: `http://…:http_port` or (`tls`) `https://…:https_port`, with
    /// `user:password@` when `with_credentials`.
    pub fn proxy_url(&self, tls: bool, with_credentials: bool) -> String {
        let (scheme, port) = self.scheme_port(tls);
        if with_credentials {
            format!(
                "{scheme}://{}:{}@127.0.0.1:{port}",
                self.user, self.password
            )
        } else {
            format!("{scheme}://127.0.0.1:{port}")
        }
    }

    /// The proxy URL with arbitrary credentials (for wrong-password tests); `user` and
    /// `password` are inserted as given, so percent-encode them if needed.
    pub fn proxy_url_as(&self, tls: bool, user: &str, password: &str) -> String {
        let (scheme, port) = self.scheme_port(tls);
        format!("{scheme}://{user}:{password}@127.0.0.1:{port}")
    }

    fn scheme_port(&self, tls: bool) -> (&'static str, u16) {
        if tls {
            ("https", self.https_port)
        } else {
            ("http", self.http_port)
        }
    }

    /// The access log so far: one line per finished transaction, e.g.
    /// `TCP_TUNNEL/200 … CONNECT 127.0.0.1:PORT corral …` or `TCP_DENIED/407 …`.
    ///
    /// A transaction is logged when it ends: a `CONNECT` tunnel only once the client
    /// closes the connection (drop pooled clients first), see [`Squid::wait_for_access_log`].
    pub fn access_log(&self) -> String {
        read_lossy(&self.access_log)
    }

    /// Waits (up to 5 s) until the access log contains `needle` and returns the log.
    ///
    /// # Panics
    ///
    /// If `needle` does not show up, with the log in the message.
    pub fn wait_for_access_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let log = self.access_log();
            if log.contains(needle) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "squid's access log never contained {needle:?}:\n{log}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// squid's cache log (its diagnostics) and stdout/stderr so far.
    pub fn log(&self) -> String {
        format!(
            "{}{}",
            read_lossy(&self.cache_log),
            read_lossy(&self.out_log)
        )
    }

    /// The temporary directory holding the config, password file and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Squid {
    fn drop(&mut self) {
        // Best effort throughout: a failing drop must not hide the test's own result.
        let terminated = command("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let deadline = Instant::now() + SQUID_STOP_GRACE;
        while terminated && Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_)) | Err(_)) {
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        // A killed squid leaves its shared-memory segments behind.
        let prefix = format!("{}-", self.service_name);
        if let Ok(entries) = fs::read_dir("/dev/shm") {
            for entry in entries.filter_map(Result::ok) {
                if entry.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
    }
}
