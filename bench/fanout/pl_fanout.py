#!/usr/bin/env python3
"""Helpers for bench/fanout/plenary.sh (Plenary side of the fan-out benchmark). Stdlib only,
except `verify`, which also checks DKIM signatures with dkimpy if it is installed.

  members N FILE   write N member lines `userNNNNNN@example.net` (the addresses mm_fanout.py
                   setup uses for Mailman)
  post             send one ~3 KB text post over SMTP and count recipients arriving in an
                   smtp-sink -D dump (the same counter as mm_fanout.py post), or with --count in
                   smtp-sink -c's running counter (no dump: the sink writes no message data to
                   disk, so it costs the shared CPUs less; one recipient per copy, so messages
                   = recipients); also CPU time of
                   the daemon and the sink over the run and the daemon's VmHWM. One JSON object.
                   CPU figures are in units of one core: pct_of_one_core and machine_busy_pct
                   (all processes, from /proc/stat) reach 100 * nproc when every core is busy.
  verify           sample copies from the dump: DKIM-Signature present (and valid, with dkimpy),
                   List-Unsubscribe one-click URLs distinct, VERP envelope sender naming the
                   recipient. One JSON object.
"""
import argparse
import json
import os
import random
import re
import smtplib
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # no __pycache__ in the repository
sys.path.insert(0, HERE)
from mm_fanout import DumpCounter, Tail, make_post  # noqa: E402  (stdlib-only parts)

TICK = os.sysconf("SC_CLK_TCK")


class SinkCounter:
    """Counts messages from smtp-sink -c, which writes "sess=A quit=B mesg=C\r" to its
    stdout (here a file) whenever "." is received. Each copy has one recipient, so the
    recipient count is the message count. Same interface as DumpCounter."""

    PAT = re.compile(rb"mesg=(\d+)")

    def __init__(self, path):
        self.src = Tail(path)
        self.tail = b""
        self.mesg = 0
        self.first_mail_args = []  # not in the counter output
        self.poll()
        self.base = self.mesg

    def poll(self):
        data = self.src.read(1 << 20)
        if not data:
            return
        buf = self.tail + data
        cut = buf.rfind(b"\r")
        if cut < 0:
            self.tail = buf
            return
        found = self.PAT.findall(buf[:cut])
        if found:
            self.mesg = max(self.mesg, int(found[-1]))
        self.tail = buf[cut + 1:]

    def counts(self):
        n = self.mesg - self.base
        return n, n


def log(*a):
    print("[%s] pl_fanout: %s" % (time.strftime("%H:%M:%S"), " ".join(str(x) for x in a)),
          file=sys.stderr, flush=True)


def cmd_members(a):
    with open(a.file, "w") as f:
        for i in range(1, a.n + 1):
            f.write("user%06d@example.net\n" % i)
    return 0


# ------------------------------------------------------------------------------- /proc
def proc_cpu(pid):
    """(utime, stime) in seconds of a whole process, or None if it is gone."""
    try:
        stat = open("/proc/%d/stat" % pid).read()
    except OSError:
        return None
    rest = stat[stat.rindex(")") + 2:].split()
    return int(rest[11]) / TICK, int(rest[12]) / TICK


def machine_cpu():
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    f = open("/proc/stat").readline().split()[1:]
    v = [int(x) for x in f]
    idle = v[3] + v[4]  # idle + iowait
    return sum(v) - idle, sum(v)


def vm_hwm_kb(pid):
    try:
        for line in open("/proc/%d/status" % pid):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class CpuWatch:
    def __init__(self, pids):
        self.pids = pids
        self.start = {p: proc_cpu(p) for p in pids}
        self.mstart = machine_cpu()
        self.last = dict(self.start)
        self.mlast = self.mstart
        self.tlast = time.time()

    def delta(self, since, msince, tsince=None):
        now = {p: proc_cpu(p) for p in self.pids}
        m = machine_cpu()
        out = {}
        for p in self.pids:
            a, b = since[p], now[p]
            out[p] = (round(b[0] - a[0], 2), round(b[1] - a[1], 2)) if a and b else None
        mb = m[0] - msince[0]
        mt = max(m[1] - msince[1], 1)
        return now, m, out, round(100.0 * mb / mt * os.cpu_count(), 1)

    def interval(self):
        now, m, d, busy = self.delta(self.last, self.mlast)
        t = time.time()
        dt = max(t - self.tlast, 1e-3)
        pct = {p: (round(100 * (v[0] + v[1]) / dt) if v else None) for p, v in d.items()}
        self.last, self.mlast, self.tlast = now, m, t
        return pct, busy

    def total(self):
        _, _, d, busy = self.delta(self.start, self.mstart)
        return d, busy


def cmd_post(a):
    dc = SinkCounter(a.count) if a.count else DumpCounter(a.dump)
    msg = make_post(a.sender, a.list, a.tag, a.size)
    host, port = a.smtp.rsplit(":", 1)
    cw = CpuWatch([a.pid, a.sink_pid])
    t0 = time.time()
    c = smtplib.SMTP(host, int(port), timeout=60)
    c.sendmail(a.sender, [a.list], msg)
    t_acc = time.time()
    c.quit()
    log("%s: post of %d bytes accepted over SMTP in %.3fs; waiting for %d recipients (cap %ss)"
        % (a.tag, len(msg), t_acc - t0, a.expect, a.timeout))
    first = last = None
    last_n = 0
    next_report = t0 + a.progress
    timed_out = True
    stall_since = None
    while True:
        dc.poll()
        n, m = dc.counts()
        now = time.time()
        if n > last_n:
            last = now
            last_n = n
            if first is None:
                first = now
        if n >= a.expect:
            timed_out = False
            break
        if now - t0 >= a.timeout:
            break
        if now >= next_report:
            pct, busy = cw.interval()
            rate = n / max(now - (first or now), 1e-3) if first else 0
            log("%s: %d/%d recipients after %.0fs (%.0f/s since first); cpu%% of one core: "
                "plenary %s sink %s, whole machine %s (max %d)"
                % (a.tag, n, a.expect, now - t0, rate, pct[a.pid], pct[a.sink_pid], busy,
                   100 * os.cpu_count()))
            next_report = now + a.progress
        time.sleep(a.poll)
    end = time.time() if timed_out else last
    cpu, busy = cw.total()
    hwm = vm_hwm_kb(a.pid)
    n, m = dc.counts()
    seconds = end - t0
    wall = time.time() - t0

    def cpu_j(v):
        return None if v is None else {"user_s": v[0], "sys_s": v[1],
                                       "pct_of_one_core": round(100 * (v[0] + v[1]) / max(wall, 1e-6))}
    res = {
        "system": "plenary", "mode": a.mode, "members": a.expect,
        "seconds": round(seconds, 3),
        "recipients_per_s": round(n / max(seconds, 1e-6), 1),
        "delivered": n, "messages": m,
        "timed_out": timed_out,
        "post_bytes": len(msg),
        "smtp_accept_s": round(t_acc - t0, 3),
        "first_rcpt_s": round((first - t0), 3) if first else None,
        "smtp_phase_s": round(end - first, 3) if first else None,
        "recipients_per_s_smtp_phase": round(n / max(end - first, 1e-6), 1) if first else None,
        "peak_rss_mb": round(hwm / 1024, 1) if hwm else None,
        "cpu_window_s": round(wall, 3),
        "cpu_plenary": cpu_j(cpu[a.pid]),
        "cpu_sink": cpu_j(cpu[a.sink_pid]),
        "machine_busy_pct": busy,
        "sample_mail_from": [x.split(": ", 1)[-1] for x in dc.first_mail_args[:2]],
    }
    res.update(json.loads(a.extra))
    print(json.dumps(res, separators=(",", ":")))
    return 0


# ------------------------------------------------------------------------------- verify
REC = b"\nX-Client-Addr: "


def records_in(buf, whole_start):
    """Complete dump records in buf (bytes of the dump at some offset)."""
    out = []
    i = 0 if whole_start else buf.find(REC)
    if i < 0:
        return out
    if not whole_start:
        i += 1
    while True:
        j = buf.find(REC, i)
        if j < 0:
            break  # the last one may be cut off
        out.append(buf[i:j + 1])
        i = j + 1
    return out


def parse(rec):
    head, _, msg = rec.partition(b"\nReceived: ")
    env = dict(re.findall(rb"^(X-[A-Za-z-]+): (.*)$", head, re.M))
    # drop the sink's own Received header (first line plus its continuation lines)
    lines = msg.split(b"\n")
    k = 1
    while k < len(lines) and lines[k][:1] in (b" ", b"\t"):
        k += 1
    body = b"\n".join(lines[k:])
    if body.endswith(b"\n\n"):
        body = body[:-1]  # the empty separator line smtp-sink writes after each record
    return env, body.replace(b"\n", b"\r\n")


def header(msg, name):
    m = re.search(rb"^" + name + rb":(.*(?:\r\n[ \t].*)*)", msg, re.M | re.I)
    return m.group(1).strip() if m else None


def cmd_verify(a):
    size = os.path.getsize(a.dump)
    rnd = random.Random(42)
    recs = []
    with open(a.dump, "rb") as f:
        recs += records_in(f.read(1 << 20), True)[: a.n // 2]
        for _ in range(8):
            off = rnd.randrange(0, max(size - (1 << 18), 1))
            f.seek(off)
            recs += records_in(f.read(1 << 18), False)[: max(a.n // 16, 1)]
    # the random windows may overlap each other or the first one: one record per recipient
    seen, uniq = set(), []
    for r in recs:
        k = re.search(rb"^X-Rcpt-Args: (.*)$", r, re.M)
        k = k.group(1) if k else r
        if k not in seen:
            seen.add(k)
            uniq.append(r)
    recs = uniq
    try:
        import dkim
        pub = open(a.pubkey, "rb").read() if a.pubkey else None
    except ImportError:
        dkim = None
    txt = None
    if dkim and pub:
        b64 = b"".join(l for l in pub.splitlines() if l and not l.startswith(b"-----"))
        txt = b"v=DKIM1; k=rsa; p=" + b64

    def dnsfunc(name, timeout=5):
        return txt

    res = {"sampled": 0, "with_dkim_signature": 0, "dkim_checked": 0, "dkim_valid": 0,
           "with_list_unsubscribe_url": 0, "distinct_unsub_urls": 0, "one_click_post": 0,
           "verp_matches_rcpt": 0, "dkim_d_s": None, "errors": []}
    urls = set()
    for i, rec in enumerate(recs):
        env, msg = parse(rec)
        res["sampled"] += 1
        sig = header(msg, b"DKIM-Signature")
        if sig:
            res["with_dkim_signature"] += 1
            if res["dkim_d_s"] is None:
                d = re.search(rb"\bd=([^;\s]+)", sig)
                s = re.search(rb"\bs=([^;\s]+)", sig)
                res["dkim_d_s"] = "d=%s s=%s" % (d.group(1).decode() if d else "?",
                                                 s.group(1).decode() if s else "?")
        lu = header(msg, b"List-Unsubscribe")
        if lu:
            m = re.search(rb"<(https?://[^>]+)>", lu)
            if m:
                res["with_list_unsubscribe_url"] += 1
                urls.add(m.group(1))
        if header(msg, b"List-Unsubscribe-Post") == b"List-Unsubscribe=One-Click":
            res["one_click_post"] += 1
        rcpt = env.get(b"X-Rcpt-Args", b"").strip(b"<>")
        frm = env.get(b"X-Mail-Args", b"").split(b" ")[0].strip(b"<>")
        if b"@" in rcpt:
            lp, dom = rcpt.split(b"@", 1)
            if (lp + b"=" + dom) in frm:
                res["verp_matches_rcpt"] += 1
        if dkim and txt and sig and res["dkim_checked"] < a.dkim_n:
            res["dkim_checked"] += 1
            try:
                ok = dkim.verify(msg, dnsfunc=dnsfunc)
            except Exception as e:  # noqa: BLE001
                ok = False
                res["errors"].append(repr(e)[:200])
            res["dkim_valid"] += int(bool(ok))
        if a.arc:
            if header(msg, b"ARC-Seal"):
                res["with_arc_seal"] = res.get("with_arc_seal", 0) + 1
            if dkim and txt and res.get("arc_checked", 0) < a.dkim_n:
                res["arc_checked"] = res.get("arc_checked", 0) + 1
                try:
                    cv, _, _ = dkim.arc_verify(msg, dnsfunc=dnsfunc)
                except Exception as e:  # noqa: BLE001
                    cv = None
                    res["errors"].append(repr(e)[:200])
                res["arc_valid"] = res.get("arc_valid", 0) + int(cv == dkim.CV_Pass)
        if i == 0:
            res["sample_headers"] = {
                "mail_from": frm.decode(), "rcpt": rcpt.decode(),
                "list_unsubscribe": (lu or b"").decode()[:160],
            }
    res["distinct_unsub_urls"] = len(urls)
    res["dkimpy"] = bool(dkim)
    res["errors"] = res["errors"][:3]
    print(json.dumps(res, separators=(",", ":")))
    ok = (res["sampled"] > 0 and res["with_dkim_signature"] == res["sampled"]
          and res["distinct_unsub_urls"] == res["sampled"]
          and res["dkim_valid"] == res["dkim_checked"]
          and (not a.arc or (res.get("with_arc_seal") == res["sampled"]
                             and res.get("arc_valid", 0) == res.get("arc_checked", 0))))
    return 0 if ok else 4


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("members")
    s.add_argument("n", type=int)
    s.add_argument("file")
    s = sub.add_parser("post")
    s.add_argument("--smtp", required=True, help="HOST:PORT of plenary's SMTP listener")
    s.add_argument("--pid", type=int, required=True, help="plenary serve")
    s.add_argument("--sink-pid", type=int, required=True)
    s.add_argument("--list", required=True)
    s.add_argument("--from", dest="sender", default="poster@example.org")
    s.add_argument("--expect", type=int, required=True)
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--dump", help="smtp-sink -D dump file")
    g.add_argument("--count", help="smtp-sink -c output file")
    s.add_argument("--timeout", type=float, default=1200)
    s.add_argument("--size", type=int, default=3000)
    s.add_argument("--tag", default="personalized")
    s.add_argument("--mode", default="personalized+dkim")
    s.add_argument("--poll", type=float, default=0.002)
    s.add_argument("--progress", type=float, default=5)
    s.add_argument("--extra", default="{}", help="JSON object merged into the result")
    s = sub.add_parser("verify")
    s.add_argument("--dump", required=True)
    s.add_argument("--pubkey", default="")
    s.add_argument("-n", type=int, default=200, help="records to sample (about)")
    s.add_argument("--dkim-n", type=int, default=50, help="signatures to verify with dkimpy")
    s.add_argument("--arc", action="store_true", help="every copy must carry a valid ARC set")
    a = ap.parse_args()
    return {"members": cmd_members, "post": cmd_post, "verify": cmd_verify}[a.cmd](a) or 0


if __name__ == "__main__":
    sys.exit(main())
