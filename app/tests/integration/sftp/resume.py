"""Uploads continued the way WinSCP-like clients do it, with paramiko.
Arguments: port user password scenario [args]. Prints "ok" when the server
behaves as documented (docs/SERVE.md); exits non-zero, saying why."""
import sys

import paramiko

port, user, password, scenario = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
args = sys.argv[5:]


def connect():
    t = paramiko.Transport(("127.0.0.1", int(port)))
    t.connect(username=user, password=password)
    return t, paramiko.SFTPClient.from_transport(t)


def fail(why):
    print("FAIL:", why)
    sys.exit(1)


if scenario == "filepart-cut":
    # Writes the first `cut` bytes of the local file to NAME.filepart and
    # drops the connection without closing the file.
    local, name, cut = args[0], args[1], int(args[2])
    data = open(local, "rb").read()[:cut]
    t, s = connect()
    f = s.open(name + ".filepart", "w")
    # Not pipelined: each write answered before the next, so the server
    # has every byte when the connection goes, the file never closed.
    step = 1 << 20
    for i in range(0, len(data), step):
        f.write(data[i:i + step])
    t.close()
    print("ok")

elif scenario == "filepart-continue":
    # Continues NAME.filepart from the size the server shows, without
    # truncating it, then renames it to NAME; prints the size it found.
    local, name = args[0], args[1]
    data = open(local, "rb").read()
    t, s = connect()
    have = s.stat(name + ".filepart").st_size
    if have <= 0 or have > len(data):
        fail(f"the partial file shows {have} bytes")
    try:
        s.open(name + ".filepart", "r").read(1)
        fail("a partial file was readable")
    except IOError:
        pass
    f = s.open(name + ".filepart", "r+")
    f.set_pipelined(True)
    f.seek(have)
    step = 1 << 20
    for i in range(have, len(data), step):
        f.write(data[i:i + step])
    f.close()
    s.rename(name + ".filepart", name)
    with s.open(name, "r") as g:
        back = g.read()
    if back != data:
        fail(f"the continued file differs ({len(back)} bytes)")
    print(f"continued from {have}")
    print("ok")

else:
    fail("no scenario " + scenario)
