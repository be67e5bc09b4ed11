#!/usr/bin/env python3
"""Read Plenary's Atom feeds with feedparser and its mbox downloads with Python's mailbox.

usage: check_feeds_mbox.py BASE_URL --feed PATH ... --mbox PATH ...
Prints JSON: {"feeds": {PATH: {"version", "bozo", "entries": [{id, title, link, updated}]}},
              "mbox": {PATH: {"count": N, "ids": [Message-ID, ...]}}}
Exits 1 if a feed is not well-formed Atom (feedparser's bozo flag) or an entry lacks a field.
"""
import json
import mailbox
import sys
import tempfile
import urllib.request

import feedparser

base = sys.argv[1]
feeds, mboxes, mode = [], [], None
for a in sys.argv[2:]:
    if a in ("--feed", "--mbox"):
        mode = a
    elif mode == "--feed":
        feeds.append(a)
    elif mode == "--mbox":
        mboxes.append(a)

out = {"feeds": {}, "mbox": {}}
ok = True
for path in feeds:
    data = urllib.request.urlopen(base + path, timeout=60).read()
    f = feedparser.parse(data)
    entries = []
    for e in f.entries:
        item = {k: e.get(k) for k in ("id", "title", "link")}
        item["updated"] = bool(e.get("updated_parsed"))
        item["author"] = e.get("author")
        if not all([item["id"], item["title"] is not None, item["link"], item["updated"]]):
            ok = False
        entries.append(item)
    if f.bozo or f.version != "atom10":
        ok = False
    out["feeds"][path] = {"version": f.version, "bozo": int(bool(f.bozo)),
                          "bozo_exception": str(f.get("bozo_exception", "")),
                          "title": f.feed.get("title"), "entries": entries}
for path in mboxes:
    with tempfile.NamedTemporaryFile(suffix=".mbox") as tmp:
        with urllib.request.urlopen(base + path, timeout=300) as r:
            while True:
                chunk = r.read(1 << 16)
                if not chunk:
                    break
                tmp.write(chunk)
        tmp.flush()
        ids = []
        for msg in mailbox.mbox(tmp.name):
            ids.append((msg.get("Message-ID") or "").strip().strip("<>"))
        out["mbox"][path] = {"count": len(ids), "ids": ids}
print(json.dumps(out))
sys.exit(0 if ok else 1)
