"""The server's limits and options, seen by a paramiko client. Arguments:
port user password scenario [args]. Prints "ok" when the server behaves as
documented (docs/SERVE.md); exits non-zero, saying why, otherwise."""
import errno
import sys
import time

import paramiko

port, user, password, scenario = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
args = sys.argv[5:]


def transport(name=user, pw=password):
    t = paramiko.Transport(("127.0.0.1", int(port)))
    try:
        t.connect(username=name, password=pw)
    except BaseException:
        # A refused connection must not hold a place on the server.
        t.close()
        raise
    return t


def connect(name=user, pw=password):
    t = transport(name, pw)
    return t, paramiko.SFTPClient.from_transport(t)


def fail(why):
    print("FAIL:", why)
    sys.exit(1)


def refused(what, f, code=None, text=None):
    """`f` must fail with an IOError carrying errno `code` (paramiko's
    mapping of the SFTP status) and/or a message holding `text`."""
    try:
        got = f()
    except IOError as e:
        if code is not None and e.errno != code:
            fail(f"{what}: errno {e.errno} ({e}), expected {code}")
        if text is not None and text not in str(e):
            fail(f"{what}: {e!r} does not say {text!r}")
        return e
    fail(f"{what} succeeded: {got!r}")


def eventually(connect):
    """`connect()` within 5 s: a closed connection's place is given back
    when the server sees it closed."""
    for _ in range(50):
        try:
            return connect()
        except (paramiko.SSHException, EOFError, ConnectionError):
            time.sleep(0.1)
    fail("a freed place was not given back within 5 s")


def put(s, path, data):
    with s.open(path, "w") as f:
        f.write(data)


def get(s, path):
    with s.open(path, "r") as f:
        return f.read()


if scenario == "handles":
    # --max-handles N: N handles open at once, the next refused, one freed
    # makes room.
    n = int(args[0])
    t, s = connect()
    put(s, "/f", b"x")
    opened = [s.open("/f", "r") for _ in range(n)]
    refused("one handle more", lambda: s.open("/f", "r"), text="too many open handles")
    refused("a directory more", lambda: s.listdir("/"), text="too many open handles")
    opened.pop(0).close()
    s.open("/f", "r").close()
    print("ok")

elif scenario == "channels":
    # --max-channels N: N SFTP channels on one connection, the next refused.
    n = int(args[0])
    t = transport()
    clients = [paramiko.SFTPClient.from_transport(t) for _ in range(n)]
    try:
        paramiko.SFTPClient.from_transport(t)
        fail(f"channel {n + 1} was opened")
    except paramiko.ChannelException as e:
        if e.code != paramiko.common.OPEN_FAILED_RESOURCE_SHORTAGE:
            fail(f"channel {n + 1} refused with code {e.code}")
    for c in clients:
        c.stat("/")
    print("ok")

elif scenario == "sessions":
    # --max-sessions N (all users) and --max-sessions-per-user M: args are
    # N M other-user other-password.
    total, per_user, other, other_pw = int(args[0]), int(args[1]), args[2], args[3]
    mine = [transport() for _ in range(per_user)]
    try:
        transport()
        fail(f"session {per_user + 1} of {user} was let in")
    except paramiko.AuthenticationException:
        pass
    # The refused attempt's connection frees its place once the server sees
    # it closed.
    theirs = [eventually(lambda: transport(other, other_pw)) for _ in range(total - per_user)]
    try:
        transport(other, other_pw)
        fail(f"connection {total + 1} was let in")
    except (paramiko.SSHException, EOFError, ConnectionError):
        pass
    for t in mine + theirs:
        paramiko.SFTPClient.from_transport(t).stat("/")
    # A session ended frees its place.
    mine.pop().close()
    eventually(transport).close()
    print("ok")

elif scenario == "setstat-refuse":
    t, s = connect()
    put(s, "/f", b"x")
    refused("chmod", lambda: s.chmod("/f", 0o600), text="not supported")
    refused("utime", lambda: s.utime("/f", (1, 1)), text="not supported")
    with s.open("/f", "r+") as f:
        refused("fchmod", lambda: f.chmod(0o600), text="not supported")
    print("ok")

elif scenario == "setstat-ignore":
    t, s = connect()
    put(s, "/f", b"x")
    s.chmod("/f", 0o600)
    s.utime("/f", (1_000_000_000, 1_000_000_000))
    if s.stat("/f").st_mtime != 1_000_000_000:
        fail(f"the time set is not kept: {s.stat('/f').st_mtime}")
    print("ok")

elif scenario == "overwrite":
    # --overwrite: args are the mode's expectation, "refuse" or "backup".
    want = args[0]
    t, s = connect()
    put(s, "/f", b"old")
    if want == "refuse":
        refused("an upload onto a file", lambda: put(s, "/f", b"new"), text="exists")
        if get(s, "/f") != b"old":
            fail("the refused upload changed the file")
    else:
        put(s, "/f", b"new")
        if get(s, "/f") != b"new" or get(s, "/f.jetbak") != b"old":
            fail(f"no backup: {sorted(s.listdir('/'))}")
    print("ok")

elif scenario == "opens":
    t, s = connect()
    # CREAT|EXCL: create-if-absent, with WRITE ("wx") or without ("x", a
    # lock file: made empty).
    with s.open("/x", "wx") as f:
        f.write(b"first")
    refused("a second exclusive create", lambda: s.open("/x", "wx"), text="already exists")
    refused("an exclusive create without WRITE", lambda: s.open("/x", "x"),
            text="already exists")
    if get(s, "/x") != b"first":
        fail("the exclusive create changed the file")
    s.open("/lock", "x").close()
    if s.stat("/lock").st_size != 0:
        fail("CREAT|EXCL without WRITE did not make an empty file")
    # APPEND: writes go at the end, whatever their offset.
    put(s, "/a", b"abc")
    with s.open("/a", "a") as f:
        f.write(b"def")
        f.seek(0)
        f.write(b"XYZ")
    if get(s, "/a") != b"abcdefXYZ":
        fail(f"append gave {get(s, '/a')!r}")
    # READ|WRITE: writable; a READ on it is OP_UNSUPPORTED; bytes not
    # written keep the old content.
    put(s, "/rw", b"0123456789")
    with s.open("/rw", "r+") as f:
        f.seek(2)
        f.write(b"ab")
        refused("a read of a file open for writing", lambda: f.read(4),
                text="not open for reading")
    if get(s, "/rw") != b"01ab456789":
        fail(f"read-write gave {get(s, '/rw')!r}")
    # Without CREAT the file must exist.
    refused("a write without CREAT", lambda: s.open("/none", "r+"), code=errno.ENOENT)
    # RENAME never replaces; posix-rename does.
    put(s, "/r1", b"one")
    put(s, "/r2", b"two")
    refused("a rename onto a file", lambda: s.rename("/r1", "/r2"), text="exists")
    if get(s, "/r2") != b"two" or get(s, "/r1") != b"one":
        fail("the refused rename changed a file")
    s.posix_rename("/r1", "/r2")
    if get(s, "/r2") != b"one" or "r1" in s.listdir("/"):
        fail("posix-rename did not replace the target")
    print("ok")

elif scenario == "reload":
    # A session stays up across a reload: connect, say "ready", wait for the
    # test to change the users file and send SIGHUP, then work again.
    t, s = connect()
    put(s, "/before", b"1")
    print("ready", flush=True)
    sys.stdin.readline()
    put(s, "/after", b"2")
    if sorted(s.listdir("/")) != ["after", "before"]:
        fail(f"the session's sandbox changed: {s.listdir('/')}")
    new_user, new_pw = args[0], args[1]
    t2, s2 = connect(new_user, new_pw)
    s2.stat("/")
    try:
        transport(user, "pw-old-" + password)
        fail("a wrong password was accepted after the reload")
    except paramiko.AuthenticationException:
        pass
    print("ok")

elif scenario == "lockout":
    # Ten failed logins from one address in a minute: the eleventh attempt,
    # even with the right password, is refused.
    failures = int(args[0])
    for i in range(failures):
        try:
            transport(user, "wrong")
            fail("a wrong password was accepted")
        except paramiko.AuthenticationException:
            pass
    try:
        transport()
        fail("the right password was accepted while the address is locked out")
    except paramiko.AuthenticationException:
        pass
    print("ok")

elif scenario == "login":
    t, s = connect()
    s.stat("/")
    print("ok")

else:
    fail("no scenario " + scenario)
