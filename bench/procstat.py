#!/usr/bin/env python3
"""Small /proc readers for the Plenary benchmarks (Linux, stdlib only).

  procstat.py threads PID            -> JSON {thread_group: cpu_seconds} (utime+stime of every
                                        thread; names with their trailing numbers removed, so
                                        sled-io-0..6 count as "sled-io")
  procstat.py cpudiff BEFORE AFTER   -> JSON of the difference, largest first, plus "exited
                                        threads" (CPU of threads that ended in between) and "total"
  procstat.py mem PID                -> JSON {vm_hwm_kb, vm_rss_kb, rss_kb, pss_kb, pss_anon_kb,
                                        pss_file_kb} from /proc/PID/status and smaps_rollup
"""
import json
import os
import re
import sys

TICK = os.sysconf("SC_CLK_TCK")


def threads(pid):
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = open(f"/proc/{pid}/task/{tid}/stat").read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        rest = stat[stat.rindex(")") + 2 :].split()
        cpu = (int(rest[11]) + int(rest[12])) / TICK  # utime, stime (fields 14, 15)
        group = re.sub(r"[-_ ]?\d+$", "", comm) or comm
        out[group] = round(out.get(group, 0.0) + cpu, 2)
    # The process counters include threads that have already exited (tantivy restarts its
    # indexing workers at every commit, so their time is only visible here).
    stat = open(f"/proc/{pid}/stat").read()
    rest = stat[stat.rindex(")") + 2 :].split()
    out["_process"] = round((int(rest[11]) + int(rest[12])) / TICK, 2)
    return out


def mem(pid):
    r = {}
    for line in open(f"/proc/{pid}/status"):
        k, _, v = line.partition(":")
        if k in ("VmHWM", "VmRSS"):
            r[k.lower().replace("vm", "vm_") + "_kb"] = int(v.split()[0])
    for line in open(f"/proc/{pid}/smaps_rollup"):
        k, _, v = line.partition(":")
        if k in ("Rss", "Pss", "Pss_Anon", "Pss_File"):
            r[k.lower() + "_kb"] = int(v.split()[0])
    return r


def main():
    cmd = sys.argv[1]
    if cmd == "threads":
        print(json.dumps(threads(sys.argv[2])))
    elif cmd == "cpudiff":
        a = json.load(open(sys.argv[2]))
        b = json.load(open(sys.argv[3]))
        d = {k: round(b.get(k, 0) - a.get(k, 0), 2) for k in set(a) | set(b) if k != "_process"}
        d = {k: v for k, v in sorted(d.items(), key=lambda kv: -kv[1]) if v > 0}
        live = sum(d.values())
        total = b.get("_process", 0) - a.get("_process", 0)
        if total - live >= 0.01:
            d["exited threads"] = round(total - live, 2)
        d["total"] = round(max(total, live), 2)
        print(json.dumps(d))
    elif cmd == "mem":
        print(json.dumps(mem(sys.argv[2])))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
