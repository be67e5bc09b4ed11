"""Verify the DKIM signatures of captured messages with dkimpy (an independent verifier).

usage: dkim_verify.py MESSAGES.jsonl SELECTOR DOMAIN PUBKEY_B64 [ED25519_PUBKEY_B64]
Prints "verified N ed25519 E unsigned U" or exits 1 naming the first message that fails.
Every message Plenary sends is meant to be signed: an unsigned one is counted (U), and the
caller decides (the delivery tests require U == 0 when keys are configured).
"""
import base64, json, sys
import dkim

path, selector, domain, rsa_pub = sys.argv[1:5]
ed_pub = sys.argv[5] if len(sys.argv) > 5 else None
records = {
    f"{selector}._domainkey.{domain}.".encode(): f"v=DKIM1; k=rsa; p={rsa_pub}".encode(),
}
if ed_pub:
    records[f"{selector}-ed._domainkey.{domain}.".encode()] = f"v=DKIM1; k=ed25519; p={ed_pub}".encode()


def dnsfunc(name, timeout=5):
    return records.get(name if name.endswith(b".") else name + b".")


n = 0
ed = 0
unsigned = []
with open(path) as f:
    for line in f:
        m = json.loads(line)
        data = m["data"].encode("latin-1")
        if b"DKIM-Signature:" not in data.split(b"\r\n\r\n", 1)[0]:
            unsigned.append(m["rcpts"])
            continue
        d = dkim.DKIM(data)
        sigs = [i for i, (k, _) in enumerate(d.headers) if k.lower() == b"dkim-signature"]
        for i, hi in enumerate(sigs):
            if not d.verify(idx=i, dnsfunc=dnsfunc):
                print(f"DKIM verification FAILED (signature {i}) for message to {m['rcpts']}:\n{data[:3000].decode('latin-1')}")
                sys.exit(1)
            if b"ed25519-sha256" in d.headers[hi][1]:
                ed += 1
        n += 1
print(f"verified {n} ed25519 {ed} unsigned {len(unsigned)}")
for rcpts in unsigned:
    print(f"unsigned: message to {rcpts}", file=sys.stderr)
