"""SFTP clients as users run them, with paramiko, and raw SFTP packets where
a library would hide what is sent. Arguments: port user password scenario
[args]. Prints "ok" and exits 0 when the server behaved; says why and exits
1 otherwise."""
import errno
import hashlib
import os
import struct
import sys
import time

import paramiko

port, user, password, scenario = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
args = sys.argv[5:]


def connect(name=user, pw=password):
    t = paramiko.Transport(("127.0.0.1", int(port)))
    t.connect(username=name, password=pw)
    return t, paramiko.SFTPClient.from_transport(t)


def fail(why):
    print("FAIL:", why, flush=True)
    sys.exit(1)


def pattern(n, seed):
    """Deterministic bytes, different for each seed."""
    out = bytearray()
    block = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}-{block}".encode()).digest()
        block += 1
    return bytes(out[:n])


# ---- raw SFTP, for what paramiko does not let one send

def packet(kind, body):
    return struct.pack(">IB", len(body) + 1, kind) + body


def string(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack(">I", len(b)) + b


class Raw:
    """One SFTP channel spoken to directly."""

    def __init__(self, t):
        self.chan = t.open_session()
        self.chan.invoke_subsystem("sftp")
        self.buf = b""
        self.send(packet(1, struct.pack(">I", 3)))  # INIT v3
        kind, _ = self.recv()
        if kind != 2:
            fail(f"no VERSION after INIT: {kind}")

    def send(self, data):
        self.chan.sendall(data)

    def recv(self):
        """The next answer: its type and body (after the type byte)."""
        while len(self.buf) < 4 or len(self.buf) < 4 + struct.unpack(">I", self.buf[:4])[0]:
            b = self.chan.recv(1 << 20)
            if not b:
                fail("the server closed the channel")
            self.buf += b
        (n,) = struct.unpack(">I", self.buf[:4])
        body = self.buf[4:4 + n]
        self.buf = self.buf[4 + n:]
        return body[0], body[1:]


def status_of(body):
    """(id, code, message) of a STATUS answer's body."""
    rid, code = struct.unpack(">II", body[:8])
    (mlen,) = struct.unpack(">I", body[8:12])
    return rid, code, body[12:12 + mlen].decode(errors="replace")


OPEN_WRITE = 0x02 | 0x08 | 0x10  # WRITE | CREAT | TRUNC


if scenario == "big":
    # paramiko's get() sends a READ for every 32 KiB of the file at once, and
    # put() pipelines its writes: both with their defaults, then as pysftp
    # and other wrappers read (getfo, and a prefetching file object).
    size = int(args[0])
    local = args[1]
    data = pattern(size, 11)
    with open(local, "wb") as f:
        f.write(data)
    want = hashlib.sha256(data).hexdigest()
    del data
    t, s = connect()
    s.put(local, "/big.bin")
    if s.stat("/big.bin").st_size != size:
        fail(f"put: the remote size is {s.stat('/big.bin').st_size}")
    back = local + ".back"
    s.get("/big.bin", back)
    with open(back, "rb") as f:
        got = hashlib.sha256(f.read()).hexdigest()
    os.remove(back)
    if got != want:
        fail("get: the bytes differ")

    class Hasher:
        def __init__(self):
            self.h, self.n = hashlib.sha256(), 0

        def write(self, b):
            self.h.update(b)
            self.n += len(b)

    h = Hasher()
    s.getfo("/big.bin", h)
    if h.h.hexdigest() != want or h.n != size:
        fail(f"getfo: {h.n} bytes, the digest differs")
    with s.open("/big.bin", "rb") as f:
        f.prefetch()
        h = hashlib.sha256()
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            h.update(b)
    if h.hexdigest() != want:
        fail("prefetching read: the bytes differ")
    s.close()
    t.close()
    print("ok", flush=True)

elif scenario == "hold":
    # Opens N handles and keeps them: half reading big files (a little of
    # each), half writing new files. Prints "opened", then sends 4 MiB to
    # each writer without waiting for answers (it blocks once the server
    # stops reading), and keeps everything until it is killed.
    n = int(args[0])
    t, s = connect()
    handles = []
    for i in range(n // 2):
        f = s.open(f"/src/{i % 8}.bin", "rb")
        f.read(1)  # the read-ahead starts
        handles.append(f)
    writers = []
    for i in range(n - n // 2):
        f = s.open(f"/held-{i}.bin", "wb")
        f.set_pipelined(True)
        writers.append(f)
    print("opened", flush=True)
    for i, f in enumerate(writers):
        f.write(pattern(4 << 20, i))
    print("written", flush=True)
    sys.stdin.read()

elif scenario == "pipeline":
    # A bulk uploader: OPEN, WRITE and CLOSE of many small files, 64 files
    # in flight at once on one channel, never waiting for an answer before
    # sending the next request of the batch.
    files, batch, size = int(args[0]), int(args[1]), int(args[2])
    kill_after = int(args[3]) if len(args) > 3 else None
    t, s = connect()
    s.mkdir("/bulk")
    raw = Raw(t)
    next_id = 1
    started = time.monotonic()
    for first in range(0, files, batch):
        names = [f"/bulk/f{i:05}" for i in range(first, min(first + batch, files))]
        ids = {}
        out = b""
        for name in names:
            ids[next_id] = name
            out += packet(3, struct.pack(">I", next_id) + string(name) + struct.pack(">II", OPEN_WRITE, 0))
            next_id += 1
        raw.send(out)
        handles = {}
        for _ in names:
            kind, body = raw.recv()
            (rid,) = struct.unpack(">I", body[:4])
            if kind != 102:
                fail(f"OPEN {ids.get(rid)}: {status_of(body)}")
            (hlen,) = struct.unpack(">I", body[4:8])
            handles[ids[rid]] = body[8:8 + hlen]
        if kill_after is not None and first >= kill_after:
            # Requests in flight, handles open: the client dies here.
            out = b""
            for name, h in handles.items():
                out += packet(6, struct.pack(">I", next_id) + string(h) + struct.pack(">Q", 0) + string(pattern(size, 1)))
                next_id += 1
            raw.send(out)
            print("killed", flush=True)
            os._exit(3)
        out = b""
        for name, h in handles.items():
            out += packet(6, struct.pack(">I", next_id) + string(h) + struct.pack(">Q", 0) + string(pattern(size, len(name))))
            next_id += 1
            out += packet(4, struct.pack(">I", next_id) + string(h))
            next_id += 1
        raw.send(out)
        for _ in range(2 * len(handles)):
            kind, body = raw.recv()
            if kind != 101 or status_of(body)[1] != 0:
                fail(f"WRITE or CLOSE: {status_of(body)}")
    names = s.listdir_attr("/bulk")
    if len(names) != files:
        fail(f"{len(names)} files listed, {files} sent")
    bad = [a.filename for a in names if a.st_size != size]
    if bad:
        fail(f"files of the wrong size: {bad[:5]}")
    print(f"ok {files} files in {time.monotonic() - started:.1f} s", flush=True)

elif scenario == "garbage":
    # Packets a server does not know, or cannot decode: answered, and the
    # session goes on.
    t, s = connect()
    raw = Raw(t)
    raw.send(packet(99, struct.pack(">I", 7) + b"whatever"))
    kind, body = raw.recv()
    if kind != 101 or status_of(body)[:2] != (7, 8):
        fail(f"an unknown packet type was answered {kind} {status_of(body) if kind == 101 else body!r}, not OP_UNSUPPORTED")
    raw.send(packet(3, struct.pack(">I", 8)))  # an OPEN with nothing after its id
    kind, body = raw.recv()
    if kind != 101 or status_of(body)[:2] != (8, 5):
        fail(f"a truncated OPEN was answered {kind} {body!r}, not BAD_MESSAGE")
    raw.send(packet(17, struct.pack(">I", 9) + string("/")))  # STAT /
    kind, body = raw.recv()
    if kind != 105 or struct.unpack(">I", body[:4])[0] != 9:
        fail(f"STAT after garbage was answered {kind} {body!r}")
    s.stat("/")  # and the other channel too
    print("ok", flush=True)

elif scenario == "in-place":
    # A file opened for writing without TRUNC keeps the bytes it does not
    # overwrite, whatever the backend: at the start, in the middle, past the
    # end, in a file of several parts, and with APPEND.
    big = int(args[0])
    t, s = connect()
    with s.open("/twelve.txt", "wb") as f:
        f.write(b"hello world!")
    with s.open("/twelve.txt", "r+") as f:  # READ|WRITE, no CREAT, no TRUNC
        f.write(b"HELLO")
    got = s.open("/twelve.txt", "rb").read()
    if got != b"HELLO world!":
        fail(f"an overwrite at 0 without TRUNC left {got!r}")
    with s.open("/twelve.txt", "r+") as f:
        f.seek(6)
        f.write(b"W")
    with s.open("/twelve.txt", "r+") as f:
        f.seek(10)
        f.write(b"DS and more")
    got = s.open("/twelve.txt", "rb").read()
    if got != b"HELLO WorlDS and more":
        fail(f"writes in the middle and past the end left {got!r}")
    with s.open("/twelve.txt", "a") as f:  # WRITE|CREAT|APPEND
        f.write(b"!")
    got = s.open("/twelve.txt", "rb").read()
    if got != b"HELLO WorlDS and more!":
        fail(f"an append left {got!r}")
    data = bytearray(pattern(big, 5))
    with s.open("/big.bin", "wb") as f:
        f.set_pipelined(True)
        f.write(bytes(data))
    at = big // 2 + 12345
    with s.open("/big.bin", "r+") as f:
        f.seek(at)
        f.write(b"0123456789")
    data[at:at + 10] = b"0123456789"
    got = s.open("/big.bin", "rb").read()
    if got != bytes(data):
        diff = next((i for i in range(min(len(got), len(data))) if got[i] != data[i]), None)
        fail(f"a write in the middle of {big} bytes: {len(got)} bytes back, first difference at {diff}")
    # A file that does not exist, opened without CREAT: no such file.
    try:
        s.open("/none.txt", "r+")
        fail("opening a missing file without CREAT succeeded")
    except IOError as e:
        if e.errno != errno.ENOENT:
            fail(f"opening a missing file without CREAT: {e!r}")
    print("ok", flush=True)

elif scenario == "visible":
    # A file being written exists for STAT and listings from the moment it
    # is opened (sshfs counts on it), with the size written so far; reading
    # it before CLOSE gets no partial content; abandoned, it leaves nothing.
    t, s = connect()
    f = s.open("/growing.bin", "wb")
    st = s.stat("/growing.bin")
    if st.st_size != 0:
        fail(f"a new file's size is {st.st_size}")
    f.write(b"x" * 1000)
    f.flush()
    s.stat("/")  # answers come in order on one channel: the write is done
    t2, s2 = connect()  # another session of the same user
    st = s2.stat("/growing.bin")
    if st.st_size != 1000:
        fail(f"another session sees {st.st_size} bytes")
    if "growing.bin" not in s2.listdir("/"):
        fail("the file being written is not listed")
    try:
        s2.open("/growing.bin", "rb").read()
        fail("a file being written was read before CLOSE")
    except IOError:
        pass
    f.close()
    if s2.open("/growing.bin", "rb").read() != b"x" * 1000:
        fail("the completed file differs")
    g = s.open("/abandoned.bin", "wb")
    g.write(b"y" * 10)
    t.close()  # the session ends without CLOSE
    deadline = time.monotonic() + 10
    while "abandoned.bin" in s2.listdir("/"):
        if time.monotonic() > deadline:
            fail("an abandoned upload is still listed")
        time.sleep(0.1)
    print("ok", flush=True)

elif scenario == "times":
    # Modification times a client sets are kept and shown.
    t, s = connect()
    with s.open("/t.txt", "wb") as f:
        f.write(b"t")
    when = 1_600_000_000
    s.utime("/t.txt", (when, when))
    if s.stat("/t.txt").st_mtime != when:
        fail(f"SETSTAT mtime: stat says {s.stat('/t.txt').st_mtime}")
    with s.open("/u.txt", "wb") as f:
        f.write(b"u")
        f.utime((when + 5, when + 5))  # FSETSTAT before CLOSE, as sftp put -p does
    if s.stat("/u.txt").st_mtime != when + 5:
        fail(f"FSETSTAT mtime: stat says {s.stat('/u.txt').st_mtime}")
    s.mkdir("/dir")
    d = s.stat("/dir").st_mtime
    if d is None or d < 1_700_000_000:
        fail(f"a directory's time is {d}")
    print("ok", flush=True)

else:
    fail("no scenario " + scenario)
