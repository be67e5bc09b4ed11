"""Count messages the way Python's mailbox module reads them (reference for import tests).

Usage: count_mbox.py PATH...   (mbox, .gz mbox, or maildir directories)
Prints JSON: {"count": N, "unique_ids": U, "missing_ids": M, "pairs": [[child, parent], ...],
"subjects": [[message_id, subject], ...]}
"""
import email.parser, email.policy, gzip, json, mailbox, os, shutil, sys, tempfile

def norm(mid):
    if mid is None:
        return None
    mid = str(mid).strip()
    if mid.startswith("<"):
        mid = mid[1:]
    if mid.endswith(">"):
        mid = mid[:-1]
    mid = mid.strip()
    return mid or None

count = 0
ids = set()
missing = 0
msgs = []
tmp = tempfile.mkdtemp()
try:
    for path in sys.argv[1:]:
        if os.path.isdir(path):
            # Python's Maildir wants cur/, new/ and tmp/; give it a complete copy.
            md = os.path.join(tmp, "md%d" % count)
            for sub in ("cur", "new", "tmp"):
                if os.path.isdir(os.path.join(path, sub)):
                    shutil.copytree(os.path.join(path, sub), os.path.join(md, sub))
                else:
                    os.makedirs(os.path.join(md, sub))
            box = mailbox.Maildir(md, factory=None, create=False)
        else:
            src = path
            with open(path, "rb") as f:
                magic = f.read(2)
            if magic == b"\x1f\x8b":
                src = os.path.join(tmp, "m%d" % count)
                with gzip.open(path, "rb") as g, open(src, "wb") as out:
                    shutil.copyfileobj(g, out)
            box = mailbox.mbox(src, factory=None, create=False)
        for key in box.iterkeys():
            m = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(box.get_bytes(key))
            count += 1
            mid = norm(m.get("Message-ID"))
            if mid is None:
                missing += 1
            else:
                ids.add(mid)
            irt = norm(m.get("In-Reply-To"))
            msgs.append((mid, irt, str(m.get("Subject") or "")))
finally:
    shutil.rmtree(tmp)
present = ids
pairs = [[mid, irt] for (mid, irt, _) in msgs if mid and irt and irt in present and irt != mid][:20]
subjects = [[mid, s] for (mid, _, s) in msgs if mid and len(s) > 20 and "=?" not in s][:20]
print(json.dumps({"count": count, "unique_ids": len(ids), "missing_ids": missing, "pairs": pairs, "subjects": subjects}))
