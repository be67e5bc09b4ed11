#!/usr/bin/env python3
"""Helpers for bench/fanout/mailman3.sh (GNU Mailman 3 side of the fan-out benchmark).

  setup     (needs /usr/bin/python3, Debian's mailman3): create the domain, the list and
            N members straight through Mailman's own model classes, in one transaction.
  mode      (needs /usr/bin/python3): set the list's personalization (none|individual|full).
  drain     wait until Mailman's queue directories are empty.
  post      inject one ~3 KB text post over LMTP and count recipients arriving in an
            smtp-sink -D dump; prints one JSON object.
  freeport  print free TCP ports on 127.0.0.1.

`drain`, `post` and `freeport` use the standard library only.
"""
import argparse
import json
import os
import smtplib
import socket
import sys
import time


def log(*a):
    print("[%s] mm_fanout: %s" % (time.strftime("%H:%M:%S"), " ".join(str(x) for x in a)),
          file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- mailman side
def mm_init(cfg):
    from mailman.core.initialize import initialize
    initialize(cfg)
    from mailman.config import config
    return config


QUIET = dict(  # no held posts, no notices, no welcome mails: only the post goes out
    send_welcome_message=False,
    send_goodbye_message=False,
    admin_immed_notify=False,
    admin_notify_mchanges=False,
    respond_to_post_requests=False,
    administrivia=False,
    max_message_size=0,
    max_num_recipients=0,
)


def set_personalize(mlist, mode):
    from mailman.interfaces.mailinglist import Personalization
    mlist.personalize = getattr(Personalization, mode)


def cmd_setup(a):
    t0 = time.time()
    config = mm_init(a.config)
    from zope.component import getUtility
    from mailman.app.lifecycle import create_list
    from mailman.interfaces.domain import IDomainManager
    from mailman.interfaces.action import Action
    from mailman.interfaces.member import MemberRole, DeliveryMode, DeliveryStatus
    from mailman.model.address import Address
    from mailman.model.member import Member
    from mailman.model.preferences import Preferences
    from mailman.model.user import User
    from mailman.database.transaction import transaction  # noqa: F401 (import check)

    local, domain = a.list.split("@", 1)
    dm = getUtility(IDomainManager)
    if dm.get(domain) is None:
        dm.add(domain)
    mlist = create_list(a.list)
    for k, v in QUIET.items():
        setattr(mlist, k, v)
    mlist.default_nonmember_action = Action.accept   # posting open to the (non-member) sender
    set_personalize(mlist, a.personalize)
    config.db.commit()
    t_list = time.time()
    log("list %s created in %.2fs (db init + list)" % (a.list, t_list - t0))

    # Members: the same objects `mailman addmembers` / app.membership.add_member creates
    # (User + linked Address + Member, each with its own Preferences row, regular delivery,
    # enabled), but without its per-member look-ups (ban check, existing user/address,
    # existing membership, nonmember clean-up) and without the SubscriptionEvent (no welcome
    # mail, no admin notice). The addresses are new and unique, so the look-ups would all
    # come back empty.
    store = config.db.store
    list_id = mlist.list_id
    batch = 2000
    with store.no_autoflush:
        for i in range(1, a.members + 1):
            email = "%s%06d@%s" % (a.prefix, i, a.domain)
            # User.__init__ adds itself (and its preferences) to the store.
            user = User(display_name="", preferences=Preferences())
            addr = Address(email, "")
            addr.preferences = Preferences()
            store.add(addr)
            addr.user = user
            m = Member(role=MemberRole.member, list_id=list_id, subscriber=addr)
            p = Preferences()
            p.delivery_mode = DeliveryMode.regular
            p.delivery_status = DeliveryStatus.enabled
            m.preferences = p
            store.add(m)
            if i % batch == 0:
                store.flush()
            if i % 20000 == 0:
                log("  %d members added (%.1fs)" % (i, time.time() - t_list))
    config.db.commit()
    t_mem = time.time()
    n = mlist.regular_members.member_count
    log("%d members added in %.2fs (%.0f/s); list now has %d regular members"
        % (a.members, t_mem - t_list, a.members / max(t_mem - t_list, 1e-6), n))
    print(json.dumps({"list_s": round(t_list - t0, 3), "members_s": round(t_mem - t_list, 3),
                      "regular_members": n}, separators=(",", ":")))
    return 0 if n == a.members else 2


def cmd_mode(a):
    config = mm_init(a.config)
    from zope.component import getUtility
    from mailman.interfaces.listmanager import IListManager
    mlist = getUtility(IListManager).get(a.list)
    set_personalize(mlist, a.personalize)
    config.db.commit()
    log("%s: personalize=%s" % (a.list, mlist.personalize.name))
    return 0


# --------------------------------------------------------------------------- stdlib side
QUEUES = ("in", "pipeline", "out", "archive", "digest", "virgin", "command", "bounces",
          "retry")


def qcount(qdir):
    per = {}
    for q in QUEUES:
        try:
            per[q] = len([f for f in os.listdir(os.path.join(qdir, q))
                          if f.endswith((".pck", ".bak"))])
        except FileNotFoundError:
            per[q] = 0
    return sum(per.values()), per


def cmd_drain(a):
    t0 = time.time()
    stable = 0
    while time.time() - t0 < a.timeout:
        tot, _ = qcount(a.queue_dir)
        stable = stable + 1 if tot == 0 else 0
        if stable >= 3:
            break
        time.sleep(0.2)
    tot, per = qcount(a.queue_dir)
    print(json.dumps({"drain_wait_s": round(time.time() - t0, 2), "left": tot,
                      "per_queue": per}))
    return 0 if tot == 0 else 3


class Tail:
    """Reads what is appended to a file, keeping it open between reads (one read call per
    poll, so the counters can poll every few milliseconds for little CPU)."""

    def __init__(self, path):
        self.path = path
        self.f = None

    def read(self, limit):
        """Up to limit new bytes (b"" while the file does not exist or nothing was added)."""
        if self.f is None:
            try:
                self.f = open(self.path, "rb", buffering=0)
            except FileNotFoundError:
                return b""
        return self.f.read(limit) or b""


class DumpCounter:
    """Counts the records smtp-sink -D appends: one X-Rcpt-Args line per accepted RCPT,
    one X-Mail-Args line per transaction (= per message copy)."""

    KEYS = (b"\nX-Rcpt-Args:", b"\nX-Mail-Args:")

    def __init__(self, path):
        self.src = Tail(path)
        self.rcpts = 0
        self.msgs = 0
        self.tail = b""
        self.first_mail_args = []
        self.capture = False
        self.poll()
        self.base = (self.rcpts, self.msgs)
        self.capture = True

    def poll(self):
        data = self.src.read(64 << 20)
        if not data:
            return
        buf = self.tail + data
        t = self.tail
        self.rcpts += buf.count(self.KEYS[0]) - t.count(self.KEYS[0])
        self.msgs += buf.count(self.KEYS[1]) - t.count(self.KEYS[1])
        self.tail = buf[-32:]
        # keep the first envelope senders of this run (shows whether VERP was applied)
        i = 0
        while self.capture and len(self.first_mail_args) < 3:
            j = buf.find(self.KEYS[1], i)
            e = buf.find(b"\n", j + 1) if j >= 0 else -1
            if e < 0:
                break
            self.first_mail_args.append(buf[j + 1:e].decode("ascii", "replace"))
            i = e

    def counts(self):
        return self.rcpts - self.base[0], self.msgs - self.base[1]


def make_post(sender, listaddr, tag, size):
    head = ("From: Bench Poster <%s>\r\nTo: %s\r\nSubject: fan-out benchmark %s\r\n"
            "Message-ID: <fanout-%d-%d@example.org>\r\nDate: %s\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n"
            "Content-Transfer-Encoding: 7bit\r\n\r\n"
            % (sender, listaddr, tag, int(time.time() * 1000), os.getpid(),
               time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())))
    body = []
    n = len(head)
    i = 0
    while n < size:
        line = ("Fan-out benchmark line %03d: the quick brown fox jumps over the lazy dog.\r\n"
                % i)
        body.append(line)
        n += len(line)
        i += 1
    return (head + "".join(body)).encode("ascii")


def cmd_post(a):
    dc = DumpCounter(a.dump)
    msg = make_post(a.sender, a.list, a.tag, a.size)
    t0 = time.time()
    c = smtplib.LMTP("127.0.0.1", a.lmtp_port)
    c.sendmail(a.sender, [a.list], msg)
    c.quit()
    t_acc = time.time()
    log("%s: post of %d bytes accepted over LMTP in %.3fs; waiting for %d recipients (cap %ss)"
        % (a.tag, len(msg), t_acc - t0, a.expect, a.timeout))
    first = last = None
    last_n = 0
    next_report = t0 + a.progress
    timed_out = True
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
            rate = n / max(now - (first or now), 1e-3) if first else 0
            log("%s: %d/%d recipients in %d copies after %.0fs (%.0f/s since first)"
                % (a.tag, n, a.expect, m, now - t0, rate))
            next_report = now + a.progress
        time.sleep(a.poll)
    end = time.time() if timed_out else last
    n, m = dc.counts()
    seconds = end - t0
    res = {
        "system": "mailman3", "mode": a.tag, "members": a.expect,
        "seconds": round(seconds, 3),
        "recipients_per_s": round(n / max(seconds, 1e-6), 1),
        "delivered": n, "messages": m,
        "timed_out": timed_out,
        "post_bytes": len(msg),
        "lmtp_accept_s": round(t_acc - t0, 3),
        "first_rcpt_s": round((first - t0), 3) if first else None,
        "smtp_phase_s": round(end - first, 3) if first else None,
        "recipients_per_s_smtp_phase": round(n / max(end - first, 1e-6), 1) if first else None,
        "sample_mail_from": [x.split(": ", 1)[-1] for x in dc.first_mail_args[:2]],
    }
    res.update(json.loads(a.extra))
    print(json.dumps(res, separators=(",", ":")))
    return 0


def cmd_freeport(a):
    socks, ports = [], []
    for _ in range(a.n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    print(" ".join(map(str, ports)))
    return 0


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("setup")
    s.add_argument("--config", required=True)
    s.add_argument("--list", required=True)
    s.add_argument("--members", type=int, required=True)
    s.add_argument("--prefix", default="user")
    s.add_argument("--domain", default="example.net")
    s.add_argument("--personalize", default="none", choices=["none", "individual", "full"])
    s = sub.add_parser("mode")
    s.add_argument("--config", required=True)
    s.add_argument("--list", required=True)
    s.add_argument("--personalize", required=True, choices=["none", "individual", "full"])
    s = sub.add_parser("drain")
    s.add_argument("--queue-dir", required=True)
    s.add_argument("--timeout", type=float, default=300)
    s = sub.add_parser("post")
    s.add_argument("--lmtp-port", type=int, required=True)
    s.add_argument("--list", required=True)
    s.add_argument("--from", dest="sender", default="poster@example.org")
    s.add_argument("--expect", type=int, required=True)
    s.add_argument("--dump", required=True)
    s.add_argument("--timeout", type=float, default=1200)
    s.add_argument("--size", type=int, default=3000)
    s.add_argument("--tag", default="personalized")
    s.add_argument("--poll", type=float, default=0.002)
    s.add_argument("--progress", type=float, default=15)
    s.add_argument("--extra", default="{}", help="JSON object merged into the result")
    s = sub.add_parser("freeport")
    s.add_argument("-n", type=int, default=1)
    a = ap.parse_args()
    return {"setup": cmd_setup, "mode": cmd_mode, "drain": cmd_drain, "post": cmd_post,
            "freeport": cmd_freeport}[a.cmd](a) or 0


if __name__ == "__main__":
    sys.exit(main())
