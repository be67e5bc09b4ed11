"""Verify the ARC sets of captured messages with dkimpy (an independent verifier).

usage: arc_verify.py MESSAGES.jsonl SELECTOR DOMAIN PUBKEY_B64 [SELECTOR:DOMAIN:PUBKEY_B64 ...]

(the extra keys are those of earlier hops in the chain)

For every captured message: the ARC chain must validate (cv=pass) with the list's key, and
the same message with its Subject changed must not (so the check can fail). Prints one
JSON line per message: {"rcpts": [...], "cv": "pass", "aar": "<ARC-Authentication-Results>"}.
Exits 1 naming the first message that fails.
"""
import json, re, sys
import dkim

path, selector, domain, pub = sys.argv[1:5]
records = {f"{selector}._domainkey.{domain}.".encode(): f"v=DKIM1; k=rsa; p={pub}".encode()}
for extra in sys.argv[5:]:
    s, d, p = extra.split(":")
    records[f"{s}._domainkey.{d}.".encode()] = f"v=DKIM1; k=rsa; p={p}".encode()


def dnsfunc(name, timeout=5):
    return records.get(name if name.endswith(b".") else name + b".")


def header(data, name):
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    m = re.search(rf"^{name}:([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)", head, re.M | re.I)
    return re.sub(r"\r\n[ \t]", " ", m.group(1)).strip() if m else None


with open(path) as f:
    for line in f:
        m = json.loads(line)
        data = m["data"].encode("latin-1")
        if header(data, "ARC-Seal") is None:
            continue
        cv, _results, comment = dkim.arc_verify(data, dnsfunc=dnsfunc)
        if cv != dkim.CV_Pass:
            print(f"ARC verification FAILED ({cv!r}: {comment}) for message to {m['rcpts']}:\n{data[:4000].decode('latin-1')}")
            sys.exit(1)
        tampered = re.sub(rb"^Subject:", b"Subject: changed", data, count=1, flags=re.M | re.I)
        bad_cv, _, _ = dkim.arc_verify(tampered, dnsfunc=dnsfunc)
        if bad_cv == dkim.CV_Pass:
            print(f"a changed Subject still verifies for message to {m['rcpts']}")
            sys.exit(1)
        print(json.dumps({"rcpts": m["rcpts"], "subject": header(data, "Subject"), "cv": cv.decode(),
                          "aar": header(data, "ARC-Authentication-Results"), "seal": header(data, "ARC-Seal")}))
