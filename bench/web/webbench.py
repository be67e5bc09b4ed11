#!/usr/bin/env python3
"""Helpers for bench/web/run.sh (Python stdlib only).

  webbench.py pick CORPUS.mbox            -> JSON: permalink, thread candidates, big thread
  webbench.py bigthread --root-mid M --subject S --list-addr A --n N --out F
                                          -> mboxrd with a root and N-1 replies to it
  webbench.py count-thread SERVER FILE    -> number of messages shown on a thread page
  webbench.py search-total SERVER FILE    -> total hits a search page reports
  webbench.py wrk FILE                    -> JSON: req/s, p50, p90, p99 (ms), non-2xx, errors
  webbench.py gz FILE...                  -> gzip -6 size of the concatenation (and each file)
  webbench.py report RESULTS.jsonl META.json -> results.md on stdout
"""
import email.header
import email.parser
import email.policy
import gzip
import json
import re
import sys


# ---------------------------------------------------------------------------------------
# corpus analysis

def mbox_messages(path):
    """Yield raw messages (bytes) of an mboxrd file, with ">From " unescaped."""
    buf = []
    with open(path, "rb") as f:
        for line in f:
            if line.startswith(b"From ") and (not buf or buf[-1] == b"\n"):
                if buf:
                    yield _unescape(b"".join(buf))
                buf = []
                continue
            buf.append(line)
    if buf:
        yield _unescape(b"".join(buf))


def _unescape(m):
    m = re.sub(rb"^>(>*From )", rb"\1", m, flags=re.M)
    if m.endswith(b"\n\n"):
        m = m[:-1]  # the separator line
    return m


def _decode(v):
    if v is None:
        return ""
    try:
        return str(email.header.make_header(email.header.decode_header(v)))
    except Exception:
        return v


def _norm_subject(s):
    s = re.sub(r"\s+", " ", s).strip()
    while True:
        t = re.sub(r"^(re|fwd?|aw)\s*:\s*", "", s, flags=re.I)
        if t == s:
            return s.lower()
        s = t


def pick(path):
    """Choose the pages' messages from the corpus itself (deterministic).

    Threads are connected components of In-Reply-To (gen_corpus.py always sets it on replies;
    its References are cut to the last 20 ids, so the first Reference is not always the root).
    public-inbox's /T/ view also pulls in messages whose normalised subject equals the thread's
    (over.sqlite3 `tid = ? OR sid = ?`), so candidates are threads whose subject no other thread
    uses: then both servers must show exactly the same set of messages.
    """
    hp = email.parser.BytesHeaderParser(policy=email.policy.compat32)
    mids, sizes, parent, subj = [], {}, {}, {}
    for raw in mbox_messages(path):
        h = hp.parsebytes(raw)
        mid = (h.get("Message-ID") or "").strip().strip("<>")
        irt = (h.get("In-Reply-To") or "").strip().strip("<>")
        mids.append(mid)
        sizes[mid] = len(raw)
        if irt:
            parent[mid] = irt
        subj[mid] = _norm_subject(_decode(h.get("Subject")))
    # union-find over In-Reply-To
    up = {m: m for m in mids}

    def find(x):
        while up[x] != x:
            up[x] = up[up[x]]
            x = up[x]
        return x

    for m, p in parent.items():
        if p in up:
            a, b = find(m), find(p)
            if a != b:
                up[a] = b
    comp = {}
    for m in mids:
        comp.setdefault(find(m), []).append(m)
    threads = []
    subj_threads = {}
    for members in comp.values():
        root = next((m for m in members if m not in parent or parent[m] not in up), members[0])
        s = subj[root]
        subj_threads.setdefault(s, 0)
        subj_threads[s] += 1
        threads.append((root, len(members), s))
    # a subject is "clean" if only one thread uses it (no message of another thread shares it)
    msg_subj_count = {}
    for m in mids:
        msg_subj_count.setdefault(subj[m], set()).add(find(m))
    clean = [(r, n) for r, n, s in threads if len(msg_subj_count.get(s, ())) == 1 and s]
    cand15 = sorted(clean, key=lambda t: (abs(t[1] - 15), t[0]))[:8]
    cand50 = sorted([t for t in clean if t[1] >= 50], key=lambda t: (t[1], t[0]))[:8]
    big = max(threads, key=lambda t: t[1])
    s = sorted((sizes[m], m) for m in mids)
    perma = s[len(s) // 2]
    hist = {}
    for _, n, _ in threads:
        k = "1" if n == 1 else "2-9" if n < 10 else "10-49" if n < 50 else "50+"
        hist[k] = hist.get(k, 0) + 1
    return {
        "messages": len(mids),
        "threads": len(threads),
        "thread_size_hist": hist,
        "largest_thread": {"root": big[0], "size": big[1]},
        "permalink_mid": perma[1],
        "permalink_bytes": perma[0],
        "thread15_candidates": [{"root": r, "size": n} for r, n in cand15],
        "thread50_candidates": [{"root": r, "size": n} for r, n in cand50],
    }


def bigthread(root_mid, subject, list_addr, n, out):
    """A root and n-1 direct replies, 1-4 KB of plain text each, deterministic."""
    import random
    r = random.Random(50)
    words = ("kernel patch build release bug fix commit branch merge review test config server "
             "client socket buffer memory cache index query thread message list archive latency "
             "throughput benchmark regression upstream package version compile warning error "
             "the of and to in is that for it as with was on be by this are or from").split()
    with open(out, "wb") as f:
        for i in range(n):
            mid = root_mid if i == 0 else "big-reply-%03d.%s" % (i, root_mid.split(".", 1)[-1])
            lines = []
            for _ in range(r.randint(12, 50)):
                lines.append(" ".join(r.choice(words) for _ in range(r.randint(6, 12))))
            body = "\n".join(lines) + "\n-- \nSender %d\n" % (i % 17)
            hdr = ["From: Sender %d <sender%d@example.org>" % (i % 17, i % 17),
                   "To: " + list_addr,
                   "Subject: " + (subject if i == 0 else "Re: " + subject),
                   "Date: Mon, 01 Dec 2025 %02d:%02d:00 +0000" % (10 + i // 60, i % 60),
                   "Message-ID: <%s>" % mid]
            if i:
                hdr += ["In-Reply-To: <%s>" % root_mid, "References: <%s>" % root_mid]
            hdr += ["MIME-Version: 1.0", "Content-Type: text/plain; charset=us-ascii",
                    "Content-Transfer-Encoding: 7bit"]
            msg = ("\n".join(hdr) + "\n\n" + body).encode()
            f.write(b"From sender@example.org Mon Dec  1 10:00:00 2025\n")
            f.write(re.sub(rb"^(>*From )", rb">\1", msg, flags=re.M))
            f.write(b"\n")


# ---------------------------------------------------------------------------------------
# page inspection

def count_thread(server, path):
    html = open(path, "rb").read().decode("utf-8", "replace")
    if server == "plenary":
        return len(re.findall(r'<article id="m\d+"', html))
    # public-inbox /T/: every message body starts with "<a\nhref=#eID\nid=mID>*</a>"
    return len(re.findall(r"<a\nhref=#e\w+\nid=m\w+>\*</a>", html))


def search_total(server, path):
    html = open(path, "rb").read().decode("utf-8", "replace")
    if server == "plenary":
        m = re.search(r'<p role="status">([^<]*?)\s*results?</p>', html)
    else:  # public-inbox: "[...] search results ... of NNN" / "N of ~M results"
        m = re.search(r"of\s+~?([\d,]+)\s", html) or re.search(r"([\d,]+)\s+results?", html)
    if not m:
        return -1
    return int(re.sub(r"\D", "", m.group(1)) or -1)


def count_items(server, page, path):
    """Topics on a list page, hits on a search page."""
    html = open(path, "rb").read().decode("utf-8", "replace")
    if page == "list":
        if server == "plenary":
            return len(re.findall(r'<tr><th scope="row">', html))
        return len(set(re.findall(r'href="([^"]*)/T/#[ut]"', html)))
    if server == "plenary":
        m = re.search(r'<ol class="results".*?</ol>', html, re.S)
        return len(re.findall(r"<li>", m.group(0))) if m else 0
    return len(re.findall(r"(?:^|<pre>)\s*\d+\. <b><a$", html, re.M))


GENERIC = re.compile(r"hyper|tower|axum::|futures_util|futures_core|core::pin::|Future>::poll|tokio::"
                     r"|std::panic|catch_unwind|core::ops::function|AssertUnwindSafe|^0x|std::sys|"
                     r"std::thread|__clone|start_thread|\[unknown\]|core::ptr::drop_in_place<hyper")


def perf_summary(path, top=14):
    """Markdown: where a perf --children report says the time goes (generic frames dropped)."""
    rows = []
    for line in open(path, errors="replace"):
        m = re.match(r"^\s+([\d.]+)%\s+([\d.]+)%\s+\S+\s+(\S+)\s+\[.\]\s+(.*?)\s*$", line)
        if m:
            rows.append((float(m.group(1)), float(m.group(2)), m.group(3), m.group(4)))
    seen, incl, per_crate = set(), [], {}
    for c, s_, dso, sym in rows:
        name = sym.replace(" (inlined)", "")
        if GENERIC.search(name) or name in seen:
            continue
        seen.add(name)
        crate = re.match(r"<*(?:&mut |&)?([A-Za-z0-9_]+)", name)
        crate = crate.group(1) if crate else name
        per_crate[crate] = per_crate.get(crate, 0) + 1
        if per_crate[crate] > (6 if crate.startswith("plenary") else 2):
            continue
        incl.append((c, s_, name))
    out = ["| incl. % | self % | function |", "|---|---|---|"]
    for c, s_, name in incl[:top]:
        out.append("| %.1f | %.1f | `%s` |" % (c, s_, name[:150]))
    selfs = sorted({(r[1], r[3].replace(" (inlined)", "")) for r in rows if r[1] > 0}, reverse=True)[:8]
    out.append("")
    out.append("Most self time: " + "; ".join("`%s` %.1f %%" % (n[:90], v) for v, n in selfs))
    return "\n".join(out)


def _ms(v):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", v or "")
    if not m:
        return None
    x = float(m.group(1))
    return round({"us": x / 1000, "ms": x, "s": x * 1000, "m": x * 60000}[m.group(2)], 3)


def wrk(path):
    out = open(path).read()
    d = {"req_per_s": 0.0, "p50_ms": None, "p90_ms": None, "p99_ms": None, "non_2xx": 0,
         "socket_errors": 0, "requests": 0}
    m = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    if m:
        d["req_per_s"] = float(m.group(1))
    for p in ("50", "90", "99"):
        m = re.search(r"^\s+%s%%\s+(\S+)" % p, out, re.M)
        if m:
            d["p%s_ms" % p] = _ms(m.group(1))
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if m:
        d["non_2xx"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        d["socket_errors"] = sum(int(x) for x in m.groups())
    m = re.search(r"(\d+) requests in", out)
    if m:
        d["requests"] = int(m.group(1))
    return d


def gz(paths):
    data = b"".join(open(p, "rb").read() for p in paths)
    return len(gzip.compress(data, compresslevel=6, mtime=0))


# ---------------------------------------------------------------------------------------
# report

def _f(x, nd=0):
    if x is None:
        return "–"
    if isinstance(x, float) and nd:
        return "{:,.{}f}".format(x, nd)
    return "{:,.0f}".format(x)


def _lat(x):
    if x is None:
        return "–"
    return ("%.2f" % x) if x < 10 else ("%.1f" % x) if x < 100 else ("%.0f" % x)


def report(res_path, meta_path):
    meta = json.load(open(meta_path))
    rows = [json.loads(l) for l in open(res_path) if l.strip()]
    http = [r for r in rows if r.get("kind") == "http"]
    pages = [r for r in rows if r.get("kind") == "page"]
    rss = {r["server"]: r for r in rows if r.get("kind") == "rss"}
    imports = {r["server"]: r for r in rows if r.get("kind") == "import"}
    order = meta["page_order"]
    hi = max([r["connections"] for r in http] or [64])
    lo = min([r["connections"] for r in http] or [1])
    get = lambda srv, page, c: next((r for r in http if r["server"] == srv and r["page"] == page
                                      and r["connections"] == c), None)
    pinfo = lambda srv, page: next((r for r in pages if r["server"] == srv and r["page"] == page), {})
    o = []
    w = o.append
    w("# Plenary vs public-inbox: archive web pages, same archive, same run\n")
    w("Generated by `bench/web/run.sh` (raw figures: `results.jsonl`, full wrk output: `logs/`). "
      "Reproduce from the repository root: `cp target/release/plenary /tmp/plenary-bench-bin && bench/web/run.sh`.\n")
    w("| | |\n|---|---|")
    for k in ("date", "commit", "plenary_binary", "public_inbox", "wrk", "xapian", "host",
              "load_at_start", "load_at_end", "corpus", "total_run_s"):
        if k in meta:
            w("| %s | %s |" % (k.replace("_", " "), meta[k]))
    w("")
    w("**Client and servers share the same 2 vCPUs** (wrk, Plenary and public-inbox-httpd on "
      "127.0.0.1; only the server under test is loaded at a time, the other one idles). "
      "Single 10 s runs vary by roughly ±10 %.\n")
    w("## Throughput and latency\n")
    w("`wrk -t1 -c%d` (unloaded latency) and `wrk -t2 -c%d` (loaded), %s s each. Ratio = Plenary req/s ÷ "
      "public-inbox req/s at %d connections.\n" % (lo, hi, meta.get("wrk_secs", "?"), hi))
    w("| page | server | req/s c=%d | p50 / p99 ms c=%d | **req/s c=%d** | p50 / p99 ms c=%d | non-2xx | HTML bytes | HTML gz-6 | +CSS gz-6 | ratio | target | met? |" % (lo, lo, hi, hi))
    w("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    targets = meta.get("targets", {})
    verdicts = []
    for page in order:
        a = get("public-inbox", page, hi)
        b = get("plenary", page, hi)
        ratio = (b["req_per_s"] / a["req_per_s"]) if a and b and a["req_per_s"] else None
        tgt = targets.get(page)
        met = "–" if tgt is None or ratio is None else ("yes" if ratio >= tgt else "**no**")
        if tgt is not None and ratio is not None:
            verdicts.append((page, ratio, tgt, ratio >= tgt))
        for srv in ("public-inbox", "plenary"):
            l1, l2 = get(srv, page, lo), get(srv, page, hi)
            pi = pinfo(srv, page)
            non = sum(x["non_2xx"] + x.get("socket_errors", 0) for x in (l1, l2) if x)
            last = srv == "plenary"
            w("| %s | %s | %s | %s / %s | **%s** | %s / %s | %s | %s | %s | %s | %s | %s | %s |" % (
                page if srv == "public-inbox" else "", srv,
                _f(l1 and l1["req_per_s"]), _lat(l1 and l1["p50_ms"]), _lat(l1 and l1["p99_ms"]),
                _f(l2 and l2["req_per_s"]), _lat(l2 and l2["p50_ms"]), _lat(l2 and l2["p99_ms"]),
                non, _f(pi.get("bytes")), _f(pi.get("gz6")),
                _f(pi.get("gz6_with_css")) if srv == "plenary" else "(inline)",
                ("**%.2f×**" % ratio if ratio is not None else "–") if last else "",
                ("≥%g×" % tgt if tgt else "–") if last else "",
                met if last else ""))
    w("")
    w("## Targets\n")
    w("| target | measured | met? |\n|---|---|---|")
    for page, ratio, tgt, ok in verdicts:
        w("| %s: Plenary ≥ %g× public-inbox req/s at c=%d | %.2f× | %s |" % (page, tgt, hi, ratio, "yes" if ok else "**no**"))
    bt = meta.get("big_thread")
    if bt:
        ok = bt["gz6_with_css"] < 100 * 1024
        w("| thread page of %d messages < 100 KB HTML+CSS compressed (gzip -6) | %s bytes (HTML %s + CSS %s) | %s |" % (
            bt["messages"], _f(bt["gz6_with_css"]), _f(bt["gz6"]), _f(bt["css_gz6"]), "yes" if ok else "**no**"))
    w("")
    w("## Pages\n")
    w("| page | public-inbox URL | Plenary URL | what is on it |\n|---|---|---|---|")
    for page in order:
        u = meta["urls"][page]
        w("| %s | `%s` | `%s` | %s |" % (page, u["public-inbox"], u["plenary"], meta.get("page_notes", {}).get(page, "")))
    w("")
    w("## Memory after the load\n")
    w("| server | processes | VmRSS sum |\n|---|---|---|")
    for srv in ("public-inbox", "plenary"):
        r = rss.get(srv)
        if r:
            w("| %s | %s | %s MiB |" % (srv, r["processes"], _f(r["rss_kb"] / 1024, 1)))
    w("")
    if imports:
        w("## Import (not the subject of this benchmark; for context)\n")
        w("| server | messages | wall s | msgs/s | note |\n|---|---|---|---|---|")
        for srv, r in imports.items():
            w("| %s | %s | %s | %s | %s |" % (srv, _f(r.get("messages")), r.get("wall_s"), _f(r.get("msgs_per_s")), r.get("note", "")))
        w("")
    profs = meta.get("profiles") or {}
    if profs:
        w("## Where Plenary's time goes (perf, %s)\n" % meta.get("profile_how", ""))
        for page in order:
            f = profs.get(page)
            if f:
                try:
                    txt = open(f).read().strip()
                except OSError:
                    continue
                w("### %s\n" % page)
                w(txt)
                w("")
    if meta.get("notes"):
        w("## Notes\n")
        for n in meta["notes"]:
            w("- " + n)
        w("")
    w("## Commands\n")
    w("```")
    w(open(meta["commands_file"]).read().rstrip())
    w("```")
    return "\n".join(o) + "\n"


def main():
    a = sys.argv[1:]
    if not a:
        print(__doc__)
        return 2
    cmd = a[0]
    if cmd == "pick":
        print(json.dumps(pick(a[1])))
    elif cmd == "bigthread":
        import argparse
        ap = argparse.ArgumentParser()
        ap.add_argument("--root-mid", required=True)
        ap.add_argument("--subject", required=True)
        ap.add_argument("--list-addr", required=True)
        ap.add_argument("--n", type=int, default=50)
        ap.add_argument("--out", required=True)
        o = ap.parse_args(a[1:])
        bigthread(o.root_mid, o.subject, o.list_addr, o.n, o.out)
    elif cmd == "count-thread":
        print(count_thread(a[1], a[2]))
    elif cmd == "search-total":
        print(search_total(a[1], a[2]))
    elif cmd == "count-items":
        print(count_items(a[1], a[2], a[3]))
    elif cmd == "perf-summary":
        print(perf_summary(a[1]))
    elif cmd == "wrk":
        print(json.dumps(wrk(a[1])))
    elif cmd == "gz":
        print(gz(a[1:]))
    elif cmd == "report":
        sys.stdout.write(report(a[1], a[2]))
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
