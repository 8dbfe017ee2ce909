"""Hostile SFTP clients, with paramiko. Arguments: port user password
scenario [args]. Exits non-zero, saying why, when the server gives in."""
import errno
import socket
import struct
import sys
import threading
import time

import paramiko

port, user, password, scenario = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
args = sys.argv[5:]


def connect(name=user, pw=password):
    t = paramiko.Transport(("127.0.0.1", int(port)))
    t.connect(username=name, password=pw)
    return t, paramiko.SFTPClient.from_transport(t)


def fail(why):
    print("FAIL:", why)
    sys.exit(1)


def refused(what, f, code=None, text=None):
    """`f` must fail with an IOError carrying errno `code` (paramiko's
    mapping of the SFTP status: ENOENT for NO_SUCH_FILE, EACCES for
    PERMISSION_DENIED) and/or a message holding `text`."""
    try:
        got = f()
    except IOError as e:
        if code is not None and e.errno != code:
            fail(f"{what}: errno {e.errno} ({e}), expected {errno.errorcode[code]}")
        if text is not None and text not in str(e):
            fail(f"{what}: {e!r} does not say {text!r}")
        return e
    fail(f"{what} succeeded: {got!r}")


if scenario == "traversal":
    # The secret of another user, planted by the test, must stay out of reach.
    secret = args[0]
    t, s = connect()
    with s.open("/own.txt", "w") as f:
        f.write(b"own")
    names = set(s.listdir("/"))
    if secret in names:
        fail(f"the other user's file {secret} is listed: {names}")
    # Every spelling that would name the other user's file from outside:
    # `..` at the root stays at the root (as a chrooted OpenSSH server has
    # it), so each lands inside this user's sandbox, where nothing is.
    other = args[1]
    escapes = [
        "/../" + other + "/" + secret, "../" + other + "/" + secret,
        "../../" + other + "/" + secret, "/a/../../" + other + "/" + secret,
        "..\\" + other + "\\" + secret, "\\..\\" + other + "\\" + secret,
        "./../" + other + "/" + secret, "/shared/../../" + other + "/" + secret,
        "//..//" + other + "//" + secret,
    ]
    # Each lands inside this user's sandbox, where nothing is: not found.
    for p in escapes:
        nf = errno.ENOENT
        refused(f"stat {p!r}", lambda: s.stat(p), nf)
        refused(f"open {p!r} for reading", lambda: s.open(p, "r").read(), nf)
        refused(f"remove {p!r}", lambda: s.remove(p), nf)
        refused(f"rmdir {p!r}", lambda: s.rmdir(p), nf)
        refused(f"listdir {p!r}", lambda: s.listdir(p), nf)
        refused(f"rename from {p!r}", lambda: s.rename(p, "/moved"), nf)
        refused(f"setstat {p!r}", lambda: s.chmod(p, 0o644), nf)
    # `..` above the root resolves to the root, every way it is spelled.
    root = sorted(s.listdir("/"))
    for p, want in [("..", "/"), ("/..", "/"), ("../..", "/"), ("/../..", "/"),
                    ("//..//", "/"), ("./..", "/"), ("/a/../..", "/"),
                    ("/../x", "/x"), ("a/b/../../../x", "/x")]:
        got = s.normalize(p)
        if got != want:
            fail(f"realpath {p!r} is {got!r}, not {want!r}")
    for p in ["..", "/..", "../.."]:
        if sorted(s.listdir(p)) != root:
            fail(f"listdir {p!r} is not the root's")
        refused(f"open {p!r} for writing", lambda: s.open(p, "w").close(),
                text="is a directory")
        refused(f"remove {p!r}", lambda: s.remove(p), errno.EACCES)
        refused(f"rmdir {p!r}", lambda: s.rmdir(p), errno.EACCES)
    # Writes through `..` land inside.
    with s.open("/../../inside.txt", "w") as f:
        f.write(b"in")
    if s.open("/inside.txt").read() != b"in":
        fail("a write to /../../inside.txt is not /inside.txt")
    s.remove("/inside.txt")
    # `..` that stays inside is fine, and trailing slashes name the same file.
    if s.normalize("/shared/..") != "/":
        fail("realpath /shared/.. is not /")
    if s.stat("/own.txt/").st_size != s.stat("/own.txt").st_size:
        fail("a trailing slash names another file")
    refused("symlink", lambda: s.symlink("/own.txt", "/link"), text="links are not supported")
    refused("readlink", lambda: s.readlink("/own.txt"), text="links are not supported")
    if "link" in s.listdir("/"):
        fail("a link was made")
    s.close()
    t.close()
    print("ok")

elif scenario == "writes":
    # Out of order and overlapping writes of one file: the bytes are where
    # they were written, the last write of a range wins.
    t, s = connect()
    n = 1 << 20
    blocks = [bytes([i]) * n for i in range(8)]
    f = s.open("/scrambled.bin", "w")
    f.set_pipelined(True)
    for i in [3, 1, 0, 2, 7, 5, 6]:
        f.seek(i * n)
        f.write(blocks[i])
    f.seek(100)
    f.write(b"x" * 1000)  # overlaps block 0, whose part is not complete yet
    f.seek(4 * n)
    f.write(blocks[4])
    f.close()
    want = bytearray(b"".join(blocks))
    want[100:1100] = b"x" * 1000
    got = s.open("/scrambled.bin", "r").read()
    if got != bytes(want):
        fail(f"the file differs ({len(got)} bytes)")
    s.close()
    t.close()
    print("ok")

elif scenario == "readdir":
    # Many READDIRs at once on one handle: every name exactly once.
    want = int(args[0])
    t, s = connect()
    seen = []
    for a in s.listdir_iter("/many", read_aheads=64):
        seen.append(a.filename)
    if len(seen) != want or len(set(seen)) != want:
        fail(f"{len(seen)} names, {len(set(seen))} distinct, expected {want}")
    # And several listings of it at once, each on a channel of its own of
    # the same connection.
    counts = []

    def count():
        c = paramiko.SFTPClient.from_transport(t)
        counts.append(len(c.listdir("/many")))
        c.close()

    threads = [threading.Thread(target=count) for _ in range(4)]
    [th.start() for th in threads]
    [th.join() for th in threads]
    if counts != [want] * 4:
        fail(f"concurrent listings gave {counts}")
    s.close()
    t.close()
    print("ok")

elif scenario == "half-close":
    # Requests, then EOF at once: every answer still comes, then EOF and the
    # exit status.
    t, s = connect()
    with s.open("/own.txt", "w") as f:
        f.write(b"own")
    chan = t.open_session()
    chan.invoke_subsystem("sftp")

    def packet(kind, body):
        return struct.pack(">IB", len(body) + 1, kind) + body

    def string(s):
        b = s.encode()
        return struct.pack(">I", len(b)) + b

    out = packet(1, struct.pack(">I", 3))  # INIT v3
    for i in range(1, 51):
        out += packet(17, struct.pack(">I", i) + string("/own.txt"))  # STAT
    chan.sendall(out)
    chan.shutdown_write()
    data = b""
    while True:
        b = chan.recv(65536)
        if not b:
            break
        data += b
    kinds, i = [], 0
    while i + 5 <= len(data):
        (n,) = struct.unpack(">I", data[i:i + 4])
        kinds.append(data[i + 4])
        i += 4 + n
    if kinds.count(2) != 1 or kinds.count(105) != 50:
        fail(f"answers after EOF: {kinds}")
    if chan.recv_exit_status() != 0:
        fail("no exit status 0")
    t.close()
    print("ok")

elif scenario == "idle":
    # A session idle for longer than the timeout is closed by the server.
    limit = float(args[0])
    t, s = connect()
    s.stat("/")
    time.sleep(limit + 3)
    try:
        s.stat("/")
    except (IOError, EOFError, paramiko.SSHException, socket.error):
        print("ok")
        sys.exit(0)
    fail("the idle session is still served")

elif scenario == "logins":
    # Wrong passwords: refused, and an unknown user takes as long as a known one.
    def attempt(name, pw):
        start = time.monotonic()
        t = paramiko.Transport(("127.0.0.1", int(port)))
        try:
            t.connect(username=name, password=pw)
            fail(f"{name} logged in with a wrong password")
        except paramiko.AuthenticationException:
            pass
        finally:
            t.close()
        return time.monotonic() - start

    known = [attempt(user, "wrong") for _ in range(3)]
    unknown = [attempt("nobody-" + str(i), "wrong") for i in range(3)]
    gap = abs(sum(known) / 3 - sum(unknown) / 3)
    print(f"known {known} unknown {unknown} gap {gap:.3f}")
    if gap > 0.25:
        fail(f"failed logins of a known and an unknown user differ by {gap:.3f} s on average")
    print("ok")

else:
    fail("no scenario " + scenario)
