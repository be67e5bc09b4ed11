#!/usr/bin/env bash
# Idle memory of the daemon on an existing data directory (by default the archive that
# bench/run.sh imported: ~90k messages in /tmp/plenary-bench/import), without re-running the
# whole benchmark. Prints PSS (procstat.py mem) after start, after a few page views and
# searches, and optionally after a wrk load and a permalink crawl.
#
#   bench/memory/probe.sh                      # start, few requests
#   WRK=1 bench/memory/probe.sh                # + wrk 3 s on each of 5 URLs at 10 connections
#   WRK=1 CONNS="1 4 10" DUR=10 bench/memory/probe.sh   # the run-of-record load
#   CRAWL=10000 bench/memory/probe.sh          # + fetch that many permalinks (crawl.py)
#   SMAPS=1 ...                                # + PSS by mapping at the end
#
# Needs the release binary (cargo build --release -p plenary), curl, python3, wrk for WRK.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${BIN:-$ROOT/target/release/plenary}
WORK=${WORK:-/tmp/plenary-bench}
CONF=${CONF:-$WORK/import/plenary.toml}
IDLE=${IDLE:-10}
B=${BASE:-http://127.0.0.1:18081}
ILIST=${ILIST:-twisted@lists.example.org}
OUT=$(mktemp -d)
[ -f "$CONF" ] || { echo "no $CONF: run ONLY=\"import web\" bench/run.sh first" >&2; exit 1; }
"$BIN" --config "$CONF" serve >"$OUT/stdout" 2>"$OUT/stderr" &
P=$!
trap 'kill $P 2>/dev/null || true; wait $P 2>/dev/null || true; rm -rf "$OUT"' EXIT
for _ in $(seq 300); do grep -q '^plenary: listening' "$OUT/stdout" && break; sleep 0.1; done
mem() { python3 "$ROOT/bench/procstat.py" mem "$P"; }
sleep 2; echo "start: $(mem)"
q() { python3 -c 'import urllib.parse,sys;print(urllib.parse.quote(sys.argv[1],safe=""))' "$1"; }
PM=$(python3 -c 'import json,sys;print(json.load(open(sys.argv[1]))["permalink_mid"])' "$WORK/twisted-all.json")
TR=$(python3 -c 'import json,sys;print(json.load(open(sys.argv[1]))["thread_root_mid"])' "$WORK/twisted-all.json")
urls=("$B/lists/$ILIST/m/$(q "$PM")/" "$B/lists/$ILIST/t/$(q "$TR")/" "$B/search?q=twisted&list=$ILIST"
      "$B/search?q=kqueue&list=$ILIST" "$B/search?q=the" "$B/" "$B/lists/$ILIST/")
for u in "${urls[@]}"; do curl -s -o /dev/null "$u"; done
sleep "$IDLE"; echo "few requests, ${IDLE}s idle: $(mem)"
if [ -n "${WRK:-}" ]; then
  for c in ${CONNS:-10}; do for u in "${urls[@]:0:5}"; do wrk -t2 -c"$c" -d"${DUR:-3}"s "$u" >/dev/null 2>&1; done; done
  sleep "$IDLE"; echo "after wrk, ${IDLE}s idle: $(mem)"
fi
if [ -n "${CRAWL:-}" ]; then
  python3 "$ROOT/bench/memory/crawl.py" --base "$B" --list "$ILIST" "$CRAWL"
  sleep "$IDLE"; echo "after crawling $CRAWL permalinks, ${IDLE}s idle: $(mem)"
fi
if [ -n "${SMAPS:-}" ]; then
  python3 - "$P" <<'PY'
import collections, sys
agg = collections.Counter(); cur = None
for line in open(f"/proc/{sys.argv[1]}/smaps"):
    parts = line.split()
    if "-" in parts[0] and not parts[0].endswith(":"):
        cur = parts[5] if len(parts) > 5 else "[anon]"
        if "/index/" in cur:
            cur = "tantivy ." + cur.rsplit(".", 1)[-1]
    elif parts[0] == "Pss:":
        agg[cur] += int(parts[1])
for k, v in agg.most_common(12):
    print(f"{v:>8} kB  {k}")
PY
fi
