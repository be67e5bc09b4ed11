#!/usr/bin/env python3
"""Corpus preparation for the Plenary benchmarks (stdlib only, deterministic).

Both subcommands read Mailman 2 pipermail monthly archives (*.txt.gz, which are mbox) and
split them exactly like `plenary import` does (crates/plenary/src/import.rs): a message
starts at every line beginning with "From ", one level of ">From " quoting is removed, and
the blank line before the next separator is dropped.

  corpus.py smtp   --out FILE --n N --token WORD  FILES...
      Wire-ready messages for bench/loadgen: records of <u32 LE length><bytes>.
      Source messages are those of MIN..MAX bytes (default 3000..6000, median ~4 KB) with no
      NUL, no bare CR and no line over 998 bytes; they are cycled in file order until N are
      written. Each output message gets a unique Message-ID
      (<plenary-bench-TAG-i@bench.example.org>, replacing the original) and WORD prepended to
      its Subject, so a search for WORD finds every benchmark message. Then CRLF line ends,
      dot-stuffing and the terminating ".\r\n".

  corpus.py mboxrd --out FILE  FILES...
      The whole archive as one mboxrd file (for public-inbox's import_mbox), same split and
      the same message bytes as plenary import sees. Also picks the URLs for the web
      benchmark: a ~4 KB message with a unique Message-ID (permalink) and the root of
      a thread of about 15 messages.

Both print a JSON line with statistics on stdout.
"""
import argparse
import collections
import gzip
import json
import re
import struct
import sys


def open_maybe_gz(path):
    f = open(path, "rb")
    head = f.read(2)
    f.seek(0)
    if head == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=f)
    return f


def split_mbox(paths):
    """Yield (path, raw bytes) like plenary's read_mbox."""
    for path in paths:
        cur = None
        with open_maybe_gz(path) as f:
            for line in f:
                if line.startswith(b"From "):
                    if cur is not None:
                        yield path, finish(cur)
                    cur = []
                    continue
                if cur is None:
                    cur = []
                gt = len(line) - len(line.lstrip(b">"))
                if gt > 0 and line[gt:].startswith(b"From "):
                    line = line[1:]
                cur.append(line)
        if cur is not None:
            yield path, finish(cur)


def finish(lines):
    raw = b"".join(lines)
    if raw.endswith(b"\r\n\r\n"):
        raw = raw[:-2]
    elif raw.endswith(b"\n\n"):
        raw = raw[:-1]
    return raw


def split_head(raw):
    i = raw.find(b"\n\n")
    if i < 0:
        return raw, b""
    return raw[: i + 1], raw[i + 1 :]


def header_fields(head):
    """List of (name_lower, full_field_bytes) with continuation lines attached."""
    fields = []
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1][1] += line
        else:
            name = line.split(b":", 1)[0].strip().lower()
            fields.append([name, line])
    return fields


MID_RE = re.compile(rb"<([^<>\s]+)>")


def field_value(fields, name):
    for n, f in fields:
        if n == name:
            return f.split(b":", 1)[1] if b":" in f else b""
    return None


def cmd_smtp(a):
    pool = []
    seen = 0
    for _, raw in split_mbox(a.files):
        seen += 1
        if not (a.min <= len(raw) <= a.max):
            continue
        if b"\0" in raw or b"\r" in raw:
            continue
        head, body = split_head(raw)
        if not body:
            continue
        if any(len(l) > 998 for l in raw.split(b"\n")):
            continue
        pool.append((head, body))
    if not pool:
        sys.exit("no usable messages")
    token = a.token.encode()
    sizes = []
    with open(a.out, "wb") as out:
        for i in range(a.n):
            head, body = pool[i % len(pool)]
            fields = header_fields(head)
            new = []
            have_subject = False
            for name, f in fields:
                if name in (b"message-id", b"list-id", b"x-loop"):
                    continue
                if name == b"subject":
                    have_subject = True
                    v = f.split(b":", 1)[1]
                    f = b"Subject: " + token + b" " + v.lstrip(b" ")
                new.append(f)
            if not have_subject:
                new.append(b"Subject: " + token + b"\n")
            new.append(b"Message-ID: <plenary-bench-%s-%d@bench.example.org>\n" % (a.tag.encode(), i))
            msg = b"".join(new) + body
            if not msg.endswith(b"\n"):
                msg += b"\n"
            lines = msg.split(b"\n")[:-1]
            wire = b"".join((b"." + l if l.startswith(b".") else l) + b"\r\n" for l in lines) + b".\r\n"
            out.write(struct.pack("<I", len(wire)))
            out.write(wire)
            sizes.append(len(msg))
    sizes.sort()
    print(json.dumps({
        "source_messages": seen, "pool": len(pool), "n": a.n, "token": a.token,
        "size_min": sizes[0], "size_median": sizes[len(sizes) // 2],
        "size_mean": round(sum(sizes) / len(sizes)), "size_max": sizes[-1],
        "min_filter": a.min, "max_filter": a.max,
    }))


def cmd_mboxrd(a):
    quote = re.compile(rb"^(>*From )", re.M)
    n = 0
    total = 0
    sizes = []
    mid_count = collections.Counter()
    roots = collections.Counter()
    with open(a.out, "wb") as out:
        for _, raw in split_mbox(a.files):
            if not raw.strip():
                continue  # plenary rejects these as empty; public-inbox skips them too
            n += 1
            total += len(raw)
            out.write(b"From mboxrd@z Thu Jan  1 00:00:00 1970\n")
            body = quote.sub(rb">\1", raw)
            out.write(body)
            if not body.endswith(b"\n"):
                out.write(b"\n")
            out.write(b"\n")
            head, _ = split_head(raw)
            fields = header_fields(head)
            mv = field_value(fields, b"message-id")
            m = MID_RE.search(mv) if mv is not None else None
            mid = m.group(1).decode("utf-8", "replace") if m else None
            if mid:
                mid_count[mid] += 1
                refs = field_value(fields, b"references") or b""
                irt = field_value(fields, b"in-reply-to") or b""
                r = MID_RE.search(refs) or MID_RE.search(irt)
                roots[r.group(1).decode("utf-8", "replace") if r else mid] += 1
                sizes.append((len(raw), mid))
    # permalink: the message with a unique Message-ID closest to 4 KB (the anchor's median)
    perma = min((abs(s - a.perma_bytes), s, m) for s, m in sizes if mid_count[m] == 1)[1:]
    # a thread root that is itself in the archive, with about 15 messages
    cands = [(abs(c - 15), r, c) for r, c in roots.items() if mid_count.get(r) == 1]
    _, troot, tsize = min(cands)
    print(json.dumps({
        "messages": n, "bytes": total, "permalink_mid": perma[1], "permalink_bytes": perma[0],
        "thread_root_mid": troot, "thread_size_estimate": tsize,
    }))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("smtp")
    s.add_argument("--out", required=True)
    s.add_argument("--n", type=int, required=True)
    s.add_argument("--token", default="plenarybenchtoken")
    s.add_argument("--tag", default="r1")
    s.add_argument("--min", type=int, default=3000)
    s.add_argument("--max", type=int, default=6000)
    s.add_argument("files", nargs="+")
    m = sub.add_parser("mboxrd")
    m.add_argument("--out", required=True)
    m.add_argument("--perma-bytes", type=int, default=4096)
    m.add_argument("files", nargs="+")
    a = p.parse_args()
    {"smtp": cmd_smtp, "mboxrd": cmd_mboxrd}[a.cmd](a)


if __name__ == "__main__":
    main()
