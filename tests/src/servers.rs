//! Real servers for tests, started on 127.0.0.1 and stopped on drop.
//!
//! - [`Pki`]: a throwaway CA and a `127.0.0.1`/`localhost` server certificate made with `openssl`.
//! - [`S3Server`]: s3s-fs (verifies SigV4), moto (accepts any credentials), over http or https,
//!   or a single-node Garage (verifies SigV4).
//! - [`GarageCluster`]: several Garage nodes replicating each other, any of which can be killed.
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
/// Region of every [`S3Server`] and [`GarageCluster`].
const S3_REGION: &str = "us-east-1";
/// Access key of Garage servers: Garage wants `GK` followed by 24 hex digits.
const GARAGE_ACCESS_KEY: &str = "GKc0441a100000000000000001";
/// Secret key of Garage servers: Garage wants 64 hex digits.
const GARAGE_SECRET_KEY: &str = "c0441a1c0441a1c0441a1c0441a1c0441a1c0441a1c0441a1c0441a1c0441a1c";
/// Bucket that [`S3Server::garage`] creates at startup (read, write and owner for its key).
pub const GARAGE_DEFAULT_BUCKET: &str = "garage-default";
/// Capacity given to each [`GarageCluster`] node in the layout (a weight, not a quota).
const GARAGE_NODE_CAPACITY: &str = "1G";
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

fn garage_bin() -> PathBuf {
    tool(
        "garage",
        "CORRAL_GARAGE",
        tools_dir().join("garage").join("bin").join("garage"),
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

/// `bytes` random bytes from `/dev/urandom`, as lowercase hex.
fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0_u8; bytes];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("cannot read /dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// `n` distinct ports that were free on 127.0.0.1 a moment ago.
fn free_ports(n: usize) -> Vec<u16> {
    let mut ports: Vec<u16> = Vec::with_capacity(n);
    while ports.len() < n {
        let port = free_port();
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    ports
}

/// `curl` making a SigV4-signed, bodiless request (`x-amz-content-sha256` of the empty body).
fn sigv4_curl(method: &str, access_key: &str, secret_key: &str, region: &str) -> Command {
    let mut cmd = curl();
    cmd.args(["-X", method, "-H"])
        .arg(format!("x-amz-content-sha256: {EMPTY_SHA256}"))
        .arg("--aws-sigv4")
        .arg(format!("aws:amz:{region}:s3"))
        .arg("--user")
        .arg(format!("{access_key}:{secret_key}"));
    cmd
}

/// Runs a curl command (adding `-o /dev/null -w %{http_code}`) and returns the HTTP status,
/// or `None` if curl failed (nothing listening, timeout, …).
fn http_status(cmd: &mut Command) -> Option<u16> {
    let out = cmd
        .args(["--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
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
    /// Garage 2.5.0, one node (`server --single-node --default-bucket`): verifies SigV4,
    /// its own access key format (`GK…`), one bucket made at startup.
    Garage,
}

/// A real S3 server on 127.0.0.1, killed (and its files removed) on drop.
///
/// Path-style addressing, region `us-east-1`. State starts empty (Garage: only
/// [`GARAGE_DEFAULT_BUCKET`]): create buckets with [`S3Server::create_bucket`] after each start.
#[derive(Debug)]
pub struct S3Server {
    /// Which server this is.
    pub kind: S3Kind,
    /// Base URL without a trailing slash: `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT`.
    pub endpoint: String,
    /// The TCP port it listens on (127.0.0.1 only).
    pub port: u16,
    /// Access key to sign requests with (`AKIACORRALTEST000001`; Garage: `GKc0441a1…`).
    pub access_key: String,
    /// Secret key to sign requests with (s3s-fs and Garage reject any other with 403).
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

    /// Starts a single-node Garage on free ports (S3 API and RPC) with fresh directories:
    /// `garage -c garage.toml server --single-node --default-bucket`.
    ///
    /// The key (`access_key`/`secret_key`, Garage's `GK…` format) may create buckets, and
    /// owns [`GARAGE_DEFAULT_BUCKET`], made at startup. Metadata in SQLite under `dir()/meta`,
    /// data under `dir()/data`, config `dir()/garage.toml`.
    ///
    /// # Panics
    ///
    /// If garage is missing (see `scripts/install-test-deps.sh`), dies or does not answer.
    pub fn garage() -> S3Server {
        let bin = garage_bin();
        let dir = temp_dir("corral-garage-");
        let ports = free_ports(2);
        let (s3_port, rpc_port) = (ports[0], ports[1]);
        let config = write_garage_config(dir.path(), 1, rpc_port, s3_port, &random_hex(32));
        let mut cmd = garage_command(&bin, &config);
        cmd.args(["server", "--single-node", "--default-bucket"])
            .env("GARAGE_DEFAULT_ACCESS_KEY", GARAGE_ACCESS_KEY)
            .env("GARAGE_DEFAULT_SECRET_KEY", GARAGE_SECRET_KEY)
            .env("GARAGE_DEFAULT_BUCKET", GARAGE_DEFAULT_BUCKET);
        Self::start(S3Kind::Garage, cmd, dir, s3_port, None)
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
            S3Kind::Garage => "garage",
        };
        let (access_key, secret_key) = match kind {
            S3Kind::S3sFs | S3Kind::Moto => (S3_ACCESS_KEY, S3_SECRET_KEY),
            S3Kind::Garage => (GARAGE_ACCESS_KEY, GARAGE_SECRET_KEY),
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
            access_key: access_key.to_owned(),
            secret_key: secret_key.to_owned(),
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
        let mut cmd = sigv4_curl("PUT", &self.access_key, &self.secret_key, &self.region);
        cmd.args(["-w", "\n%{http_code}"]);
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

    /// The temporary directory holding the log (and, for s3s-fs, the data under `data/`;
    /// for Garage, `garage.toml`, `meta/` and `data/`).
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

// ---------------------------------------------------------------- Garage

/// A TOML basic string holding `text`.
fn toml_string(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Writes `dir/garage.toml` (metadata in SQLite under `dir/meta`, data under `dir/data`,
/// RPC and S3 API on 127.0.0.1) and returns its path.
fn write_garage_config(
    dir: &Path,
    replication_factor: usize,
    rpc_port: u16,
    s3_port: u16,
    rpc_secret: &str,
) -> PathBuf {
    let (meta, data) = (dir.join("meta"), dir.join("data"));
    for d in [&meta, &data] {
        fs::create_dir_all(d).unwrap_or_else(|e| panic!("cannot create {}: {e}", d.display()));
    }
    let config = dir.join("garage.toml");
    write(
        &config,
        &format!(
            "metadata_dir = {}\n\
             data_dir = {}\n\
             db_engine = \"sqlite\"\n\
             replication_factor = {replication_factor}\n\
             rpc_bind_addr = \"127.0.0.1:{rpc_port}\"\n\
             rpc_public_addr = \"127.0.0.1:{rpc_port}\"\n\
             rpc_secret = \"{rpc_secret}\"\n\
             \n\
             [s3_api]\n\
             s3_region = \"{S3_REGION}\"\n\
             api_bind_addr = \"127.0.0.1:{s3_port}\"\n\
             root_domain = \".s3.garage.localhost\"\n",
            toml_string(&meta.to_string_lossy()),
            toml_string(&data.to_string_lossy()),
        ),
    );
    config
}

/// `garage -c CONFIG`, without any inherited `GARAGE_*` setting, quiet logs (a server
/// caller raises `RUST_LOG`).
fn garage_command(bin: &Path, config: &Path) -> Command {
    let mut cmd = command(bin);
    for (var, _) in env::vars_os() {
        if var.to_string_lossy().starts_with("GARAGE_") {
            cmd.env_remove(var);
        }
    }
    cmd.env("RUST_LOG", "netapp=warn,garage=warn")
        .env("NO_COLOR", "1")
        .arg("-c")
        .arg(config);
    cmd
}

/// One node of a [`GarageCluster`].
#[derive(Debug)]
pub struct GarageNode {
    /// Full node id (64 hex digits, the node's public key), as `garage node id` prints it.
    pub id: String,
    /// RPC port on 127.0.0.1 (the cluster shares one random `rpc_secret`).
    pub rpc_port: u16,
    /// S3 API port on 127.0.0.1.
    pub s3_port: u16,
    /// S3 API base URL without a trailing slash: `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// This node's `garage.toml`: `garage -c CONFIG …` talks to this node.
    pub config: PathBuf,
    log_file: PathBuf,
    child: Child,
    running: bool,
}

/// A Garage 2.5.0 cluster of several nodes on 127.0.0.1, each with its own directories and
/// ports, killed (and its files removed) on drop.
///
/// Every node is a storage node in zone `dc1` with the same capacity, and
/// `replication_factor = min(n, 3)` (default `consistent` mode: with 3 copies, reads and
/// writes need 2 nodes). One key (`access_key`/`secret_key`) may create buckets and owns
/// every bucket made by [`GarageCluster::create_bucket`]. Any node's S3 API serves every
/// bucket; [`GarageCluster::stop_node`] kills one to test failures.
#[derive(Debug)]
pub struct GarageCluster {
    /// The nodes, in start order; node `i` serves `endpoints[i]`.
    pub nodes: Vec<GarageNode>,
    /// S3 API base URL of each node: `http://127.0.0.1:PORT` (path style).
    pub endpoints: Vec<String>,
    /// Access key to sign requests with (Garage's `GK…` format).
    pub access_key: String,
    /// Secret key to sign requests with (anything else gets 403).
    pub secret_key: String,
    /// Region to sign requests for: `us-east-1`.
    pub region: String,
    /// Copies of each object and metadata entry: `min(n, 3)`.
    pub replication_factor: usize,
    bin: PathBuf,
    dir: TempDir,
}

impl GarageCluster {
    /// Starts `n` (≥ 1; typically 3) Garage nodes, connects them, applies a layout (all
    /// nodes in zone `dc1`, capacity 1G each, `layout apply --version 1`), imports the
    /// key and allows it to create buckets.
    ///
    /// Returns once `garage health`, asked of every node, reports all nodes up and every
    /// partition healthy, and a signed `ListBuckets` answers 200 on every node.
    ///
    /// # Panics
    ///
    /// If garage is missing (see `scripts/install-test-deps.sh`), a node dies, a `garage`
    /// command fails or the cluster is not ready in time (with every node's log).
    pub fn start(n: usize) -> GarageCluster {
        assert!(n >= 1, "a Garage cluster needs at least one node");
        let bin = garage_bin();
        let replication_factor = n.min(3);
        // A fresh secret per cluster: a node still trying to reach a killed peer's port
        // cannot join another cluster that reuses that port.
        let rpc_secret = random_hex(32);
        let ports = free_ports(2 * n);
        let mut cluster = GarageCluster {
            nodes: Vec::with_capacity(n),
            endpoints: Vec::with_capacity(n),
            access_key: GARAGE_ACCESS_KEY.to_owned(),
            secret_key: GARAGE_SECRET_KEY.to_owned(),
            region: S3_REGION.to_owned(),
            replication_factor,
            bin,
            dir: temp_dir("corral-garage-cluster-"),
        };
        for i in 0..n {
            let node_dir = cluster.dir.path().join(format!("node{i}"));
            let (rpc_port, s3_port) = (ports[2 * i], ports[2 * i + 1]);
            let config = write_garage_config(
                &node_dir,
                replication_factor,
                rpc_port,
                s3_port,
                &rpc_secret,
            );
            let log_file = node_dir.join("server.log");
            let mut cmd = garage_command(&cluster.bin, &config);
            cmd.arg("server").env("RUST_LOG", "netapp=info,garage=info");
            let child = spawn_logged(&mut cmd, &log_file, &format!("garage node {i}"));
            let endpoint = format!("http://127.0.0.1:{s3_port}");
            cluster.endpoints.push(endpoint.clone());
            cluster.nodes.push(GarageNode {
                id: String::new(),
                rpc_port,
                s3_port,
                endpoint,
                config,
                log_file,
                child,
                running: true,
            });
        }
        // A node's S3 API listens once its key pair exists and its RPC listens.
        cluster.wait_until("every node's S3 API to answer", |c| {
            c.nodes.iter().all(|node| answers_http(node.s3_port))
        });
        for i in 0..n {
            let out = cluster.cli_on(i, &["node", "id", "-q"]);
            let id = out.trim().split('@').next().unwrap_or_default().to_owned();
            assert!(
                id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()),
                "unexpected `garage node id -q` output from node {i}: {out:?}"
            );
            cluster.nodes[i].id = id;
        }
        for i in 1..n {
            let peer = format!(
                "{}@127.0.0.1:{}",
                cluster.nodes[i].id, cluster.nodes[i].rpc_port
            );
            cluster.cli_on(0, &["node", "connect", &peer]);
        }
        let ids: Vec<String> = cluster.nodes.iter().map(|node| node.id.clone()).collect();
        let mut assign = vec!["layout", "assign", "-z", "dc1", "-c", GARAGE_NODE_CAPACITY];
        assign.extend(ids.iter().map(String::as_str));
        cluster.cli_on(0, &assign);
        cluster.cli_on(0, &["layout", "apply", "--version", "1"]);
        // Node 0 is healthy first; the others learn of each other a few hundred ms later
        // (until then a request through them can fail with 503 "Could not reach quorum").
        cluster.wait_until(
            "every node to see all nodes up and every partition healthy",
            |c| (0..n).all(|i| c.is_healthy(i, n)),
        );
        let (key, secret) = (cluster.access_key.clone(), cluster.secret_key.clone());
        cluster.cli_on(
            0,
            &["key", "import", "--yes", "-n", "corral", &key, &secret],
        );
        cluster.cli_on(0, &["key", "allow", "--create-bucket", &key]);
        cluster.wait_until(
            "every node to accept the key (signed ListBuckets: 200)",
            |c| (0..n).all(|i| c.signed_status(i, "GET", "/") == Some(200)),
        );
        cluster
    }

    /// The S3 API base URL of node `i`: `http://127.0.0.1:PORT`.
    ///
    /// # Panics
    ///
    /// If there is no node `i`.
    pub fn endpoint(&self, i: usize) -> &str {
        &self.node(i).endpoint
    }

    /// Creates bucket `name` with the `garage` CLI (`bucket create`, then `bucket allow
    /// --read --write --owner` for the key) and waits until every running node serves it
    /// (signed `ListObjectsV2`: 200).
    ///
    /// # Panics
    ///
    /// If a `garage` command fails (e.g. the bucket exists, or too many nodes are down) or
    /// a running node does not see the bucket in time.
    pub fn create_bucket(&self, name: &str) {
        self.cli(&["bucket", "create", name]);
        self.cli(&[
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            name,
            "--key",
            &self.access_key,
        ]);
        let path = format!("/{name}?list-type=2&max-keys=0");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let missing: Vec<usize> = (0..self.nodes.len())
                .filter(|&i| {
                    self.nodes[i].running && self.signed_status(i, "GET", &path) != Some(200)
                })
                .collect();
            if missing.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "bucket {name} not served by node(s) {missing:?} within {READY_TIMEOUT:?}:\n{}",
                self.tails()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills node `i` (SIGKILL) and waits for it; the others keep running and keep trying
    /// to reach it. Stopping a stopped node does nothing.
    ///
    /// # Panics
    ///
    /// If there is no node `i`.
    pub fn stop_node(&mut self, i: usize) {
        let node = self.node_mut(i);
        if node.running {
            // Best effort: it may have died already; wait reaps it either way.
            let _ = node.child.kill();
            let _ = node.child.wait();
            node.running = false;
        }
    }

    /// Whether node `i` is running (was not stopped and has not exited).
    ///
    /// # Panics
    ///
    /// If there is no node `i`.
    pub fn is_running(&mut self, i: usize) -> bool {
        let node = self.node_mut(i);
        node.running && matches!(node.child.try_wait(), Ok(None))
    }

    /// Runs `garage -c CONFIG ARGS…` against the first running node and returns its stdout
    /// (e.g. `cli(&["status"])`, `cli(&["layout", "show"])`).
    ///
    /// # Panics
    ///
    /// If every node is stopped or the command fails (with its output).
    pub fn cli(&self, args: &[&str]) -> String {
        let i = (0..self.nodes.len())
            .find(|&i| self.nodes[i].running)
            .expect("every Garage node is stopped: no node to run a garage command on");
        self.cli_on(i, args)
    }

    /// Runs `garage -c CONFIG ARGS…` against node `i` and returns its stdout.
    ///
    /// # Panics
    ///
    /// If there is no node `i` or the command fails (with its output).
    pub fn cli_on(&self, i: usize, args: &[&str]) -> String {
        let mut cmd = garage_command(&self.bin, &self.node(i).config);
        cmd.args(args);
        run(&mut cmd, &format!("garage (node {i})"))
    }

    /// Node `i`'s stdout and stderr so far.
    ///
    /// # Panics
    ///
    /// If there is no node `i`.
    pub fn log(&self, i: usize) -> String {
        read_lossy(&self.node(i).log_file)
    }

    /// The temporary directory holding one `node<i>/` per node (`garage.toml`, `meta/`,
    /// `data/`, `server.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn node(&self, i: usize) -> &GarageNode {
        let n = self.nodes.len();
        self.nodes
            .get(i)
            .unwrap_or_else(|| panic!("no Garage node {i}: the cluster has {n}"))
    }

    fn node_mut(&mut self, i: usize) -> &mut GarageNode {
        let n = self.nodes.len();
        self.nodes
            .get_mut(i)
            .unwrap_or_else(|| panic!("no Garage node {i}: the cluster has {n}"))
    }

    /// Status of a signed bodiless request to node `i`, `None` if it did not answer.
    fn signed_status(&self, i: usize, method: &str, path: &str) -> Option<u16> {
        let mut cmd = sigv4_curl(method, &self.access_key, &self.secret_key, &self.region);
        cmd.arg(format!("{}{path}", self.node(i).endpoint));
        http_status(&mut cmd)
    }

    /// Whether node `i` sees `n` storage nodes up and every partition fully healthy
    /// (`garage health`).
    fn is_healthy(&self, i: usize, n: usize) -> bool {
        let mut cmd = garage_command(&self.bin, &self.node(i).config);
        cmd.arg("health");
        let Ok(out) = cmd.output() else {
            return false;
        };
        let text = String::from_utf8_lossy(&out.stdout);
        let field = |name: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        out.status.success()
            && field("Cluster health") == Some("HEALTHY")
            && field("Storage nodes up") == Some(n.to_string().as_str())
            && field("Partitions").is_some()
            && field("Fully healthy partitions") == field("Partitions")
    }

    /// Polls `ready` until it holds; panics with every log if a node exits or time runs out.
    fn wait_until(&mut self, what: &str, mut ready: impl FnMut(&GarageCluster) -> bool) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let exited = self.nodes.iter_mut().enumerate().find_map(|(i, node)| {
                let status = node.child.try_wait().expect("cannot poll a child process");
                status.filter(|_| node.running).map(|status| (i, status))
            });
            if let Some((i, status)) = exited {
                self.nodes[i].running = false;
                panic!(
                    "garage node {i} exited while waiting for {what} ({status}):\n{}",
                    self.tails()
                );
            }
            if ready(self) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Garage cluster: no {what} within {READY_TIMEOUT:?}:\n{}",
                self.tails()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn tails(&self) -> String {
        let logs: Vec<&Path> = self.nodes.iter().map(|n| n.log_file.as_path()).collect();
        tails(&logs)
    }
}

impl Drop for GarageCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            // Best effort: a node may already be dead.
            let _ = node.child.kill();
            let _ = node.child.wait();
        }
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
