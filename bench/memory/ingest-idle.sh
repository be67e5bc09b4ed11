#!/usr/bin/env bash
# Idle memory of a daemon started empty after it took N messages over SMTP (16 sessions,
# bench/loadgen), read from /proc/PID/smaps_rollup 15 s and 45 s after the load, plus the
# size of sled's directory. Then the same daemon is restarted on that data and read again.
#
#   bench/memory/ingest-idle.sh [BIN] [N]      # defaults: target/release/plenary, 20000
#
# Needs what bench/ingest-probe.sh needs (it prepares the same messages if missing).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${1:-$ROOT/target/release/plenary}
N=${2:-20000}
WORK=${WORK:-/tmp/plenary-bench}
LOADGEN=$ROOT/bench/loadgen/target/release/plenary-loadgen
MSGS=$WORK/smtp-msgs-n$N.bin
LIST=bench@lists.example.org
mkdir -p "$WORK"
if [ ! -s "$MSGS" ]; then
  python3 "$ROOT/bench/corpus.py" smtp --n "$N" --token plenarybenchtoken --out "$MSGS" \
    /work/shared/corpora/twisted-pipermail/*/*.txt.gz >"$WORK/smtp-msgs-n$N.json"
fi
dir=$WORK/ingest-idle; rm -rf "$dir"; mkdir -p "$dir"
printf '[data]\ndir = "%s/data"\n[smtp]\nlisten = "127.0.0.1:25251"\nmax_connections_per_ip = 256\nmax_connections = 512\n[web]\nlisten = "127.0.0.1:18081"\nbase_url = "http://127.0.0.1:18081"\n[log]\nlevel = "warn"\n' "$dir" >"$dir/plenary.toml"
"$BIN" --config "$dir/plenary.toml" list create $LIST >/dev/null
"$BIN" --config "$dir/plenary.toml" list set $LIST posting=open >/dev/null
pss() {  # pid label
  awk -v l="$2" '/^Pss:|^Pss_Anon|^Pss_File/{printf "%s %.1f MiB  ", $1, $2/1024} END{print l}' "/proc/$1/smaps_rollup"
}
start() {
  "$BIN" --config "$dir/plenary.toml" serve >"$dir/stdout" 2>"$dir/stderr" </dev/null &
  dpid=$!
  until grep -q '^plenary: listening' "$dir/stdout" 2>/dev/null; do sleep 0.1; done
}
trap 'kill $dpid 2>/dev/null || true' EXIT
start
"$LOADGEN" --messages "$MSGS" --port 25251 -c 16 --count "$N" --rcpt $LIST --max-seconds 300 --label idle 2>/dev/null |
  sed -n 's/^JSON //p' | python3 -c 'import json,sys; d=json.load(sys.stdin); print("ingest: %d messages, %d errors, %.0f msgs/s" % (d["sent_ok"], d["errors"], d["msgs_per_s"]))'
sleep 15; pss $dpid "(15 s after the load)"
sleep 30; pss $dpid "(45 s after the load)"
du -sh "$dir/data/sled" | sed 's/^/sled on disk: /'
kill $dpid; wait $dpid 2>/dev/null || true
start
sleep 15; pss $dpid "(restarted on that data, 15 s idle)"
