"""A tiny authoritative DNS server for end-to-end tests (UDP, stdlib only).

    dns_server.py ZONE.json OUT_DIR

(Not named dns.py: that would shadow dnspython, which dkimpy imports, for every script in
this directory.)

ZONE.json maps lower-case names (no trailing dot) to a list of TXT records (a record is
a string, or a list of strings for a record of several character-strings), or to the
string "SERVFAIL" to make lookups of that name fail. Any other name is NXDOMAIN. Every
query is appended to OUT_DIR/queries.log as "TYPE NAME". Prints "dns listening PORT".
"""
import json, os, socket, struct, sys

zone = {k.lower().rstrip("."): v for k, v in json.load(open(sys.argv[1])).items()}
out = sys.argv[2]
os.makedirs(out, exist_ok=True)
TYPES = {1: "A", 16: "TXT", 28: "AAAA"}


def parse_question(msg):
    labels, i = [], 12
    while True:
        n = msg[i]
        if n == 0:
            i += 1
            break
        labels.append(msg[i + 1:i + 1 + n].decode("ascii", "replace"))
        i += 1 + n
    qtype, _qclass = struct.unpack("!HH", msg[i:i + 4])
    return ".".join(labels).lower(), qtype, msg[12:i + 4]


def txt_rdata(record):
    parts = record if isinstance(record, list) else [record]
    chunks = []
    for text in parts:
        data = text.encode()
        chunks += [data[j:j + 255] for j in range(0, len(data), 255)] or [b""]
    return b"".join(bytes([len(c)]) + c for c in chunks)


def answer(msg):
    (qid, flags) = struct.unpack("!HH", msg[:4])
    name, qtype, question = parse_question(msg)
    with open(os.path.join(out, "queries.log"), "a") as f:
        f.write(f"{TYPES.get(qtype, qtype)} {name}\n")
    rd = flags & 0x0100
    records = zone.get(name)
    answers = []
    if records == "SERVFAIL":
        rcode = 2
    elif records is None:
        rcode = 3
    else:
        rcode = 0
        if qtype == 16:
            answers = [txt_rdata(t) for t in records]
    header = struct.pack("!HHHHHH", qid, 0x8400 | rd | rcode, 1, len(answers), 0, 0)
    body = question
    for rdata in answers:
        # name: pointer to the question's name at offset 12
        body += struct.pack("!HHHIH", 0xC00C, 16, 1, 60, len(rdata)) + rdata
    return header + body


sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.0.0.1", 0))
print(f"dns listening {sock.getsockname()[1]}", flush=True)
while True:
    msg, addr = sock.recvfrom(4096)
    try:
        sock.sendto(answer(msg), addr)
    except (IndexError, struct.error, UnicodeError):
        pass
