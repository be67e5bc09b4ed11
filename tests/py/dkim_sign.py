"""Sign a message read from stdin with dkimpy, as an author's mail server would.

usage: dkim_sign.py KEY.pem SELECTOR DOMAIN < message > signed message (CRLF)
"""
import sys
import dkim

key_path, selector, domain = sys.argv[1:4]
msg = sys.stdin.buffer.read()
sig = dkim.sign(msg, selector.encode(), domain.encode(), open(key_path, "rb").read(),
                canonicalize=(b"relaxed", b"relaxed"),
                include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
sys.stdout.buffer.write(sig + msg)
