"""ARC-seal a message read from stdin with dkimpy, as a forwarder in front of the list would.

usage: arc_sign.py KEY.pem SELECTOR DOMAIN < message > sealed message (CRLF)

The forwarder first records its own Authentication-Results (authserv-id DOMAIN), which
dkimpy copies into the ARC-Authentication-Results of instance 1.
"""
import sys
import dkim

key_path, selector, domain = sys.argv[1:4]
msg = f"Authentication-Results: {domain}; spf=pass smtp.mailfrom=author.example\r\n".encode() + sys.stdin.buffer.read()
headers = dkim.arc_sign(msg, selector.encode(), domain.encode(), open(key_path, "rb").read(), domain.encode(),
                        include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
sys.stdout.buffer.write(b"".join(headers) + msg)
