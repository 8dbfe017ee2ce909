"""The matrix case for paramiko: mkdir, two uploads, a listing, a rename,
a download, a remove, mkdir and rmdir. Arguments: port user password dir back."""
import os
import sys

import paramiko

port, user, password, local, back = sys.argv[1:6]
t = paramiko.Transport(("127.0.0.1", int(port)))
t.connect(username=user, password=password)
s = paramiko.SFTPClient.from_transport(t)
s.mkdir("d")
s.put(os.path.join(local, "big.bin"), "d/big.bin")
s.put(os.path.join(local, "small.txt"), "d/small.txt")
print("\n".join(sorted(s.listdir("d"))))
s.rename("d/small.txt", "d/renamed.txt")
s.get("d/big.bin", back)
s.remove("d/renamed.txt")
s.mkdir("e")
s.rmdir("e")
s.close()
t.close()
