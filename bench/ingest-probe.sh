#!/usr/bin/env bash
# Quick ingest probe for paired comparisons of binaries (not the run of record; that is
# `ONLY=ingest bench/run.sh`). One smtp-sink run and one Plenary run per binary, same load
# generator, same messages, 16 sessions, no pipelining, fresh data directory each time.
#
#   bench/ingest-probe.sh BIN [BIN ...]     e.g. target/release/plenary /tmp/plenary-old
#   ROUNDS=3 SINK=0 bench/ingest-probe.sh ...
#   EXTRA_TOML='[search]\ncommit_delay_ms = 60000' NO_SEARCH=1 bench/ingest-probe.sh BIN   (indexing deferred)
#
# Prints one line per run: msgs/s, the ratio to the sink of the same round, daemon CPU
# seconds per thread group during the load, and when the last message became searchable.
# Needs what `bench/run.sh` needs for its ingest part (it prepares the same messages).
set -euo pipefail
BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WORK=${WORK:-/tmp/plenary-bench}
N=${N:-20000}
C=${C:-16}
ROUNDS=${ROUNDS:-1}
SINK=${SINK:-1}
SMTP_PORT=${SMTP_PORT:-25251}
WEB_PORT=${WEB_PORT:-18081}
SINK_PORT=${SINK_PORT:-25260}
LIST=bench@lists.example.org
TOKEN=plenarybenchtoken
LOADGEN=$BENCH/loadgen/target/release/plenary-loadgen
MSGS=$WORK/smtp-msgs-n$N.bin
mkdir -p "$WORK"
[ $# -ge 1 ] || { sed -n 2,11p "$0"; exit 2; }
if [ ! -s "$MSGS" ]; then
  python3 "$BENCH/corpus.py" smtp --n "$N" --token "$TOKEN" --out "$MSGS" \
    /work/shared/corpora/twisted-pipermail/*/*.txt.gz >"$WORK/smtp-msgs-n$N.json"
fi
lg() {  # port count [args] -> msgs/s
  "$LOADGEN" --messages "$MSGS" --port "$1" -c "$C" --count "$2" --rcpt "$LIST" --max-seconds 120 \
    --label probe "${@:3}" 2>/dev/null | sed -n 's/^JSON //p' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["msgs_per_s"])'
}
total() {
  curl -s --max-time 5 "http://127.0.0.1:$WEB_PORT/api/v1/search?q=$TOKEN&list=$LIST" |
    python3 -c 'import json,sys
try: print(json.load(sys.stdin).get("total", -1))
except Exception: print(-1)'
}
for round in $(seq 1 "$ROUNDS"); do
  sink=""
  if [ "$SINK" = 1 ]; then
    /usr/sbin/smtp-sink -u nobody "127.0.0.1:$SINK_PORT" 1024 </dev/null >/dev/null 2>&1 &
    spid=$!
    sleep 0.5
    sink=$(lg "$SINK_PORT" 100000 --repeat)
    kill "$spid"; wait "$spid" 2>/dev/null || true
    echo "round $round smtp-sink: $sink msgs/s"
  fi
  for bin in "$@"; do
    dir=$WORK/probe
    rm -rf "$dir"; mkdir -p "$dir"
    printf '[data]\ndir = "%s/data"\n[smtp]\nlisten = "127.0.0.1:%s"\nmax_connections_per_ip = 256\nmax_connections = 512\n[web]\nlisten = "127.0.0.1:%s"\nbase_url = "http://127.0.0.1:%s"\n[log]\nlevel = "warn"\n%b' \
      "$dir" "$SMTP_PORT" "$WEB_PORT" "$WEB_PORT" "${EXTRA_TOML:-}" >"$dir/plenary.toml"
    "$bin" --config "$dir/plenary.toml" list create "$LIST" >/dev/null
    "$bin" --config "$dir/plenary.toml" list set "$LIST" posting=open >/dev/null
    "$bin" --config "$dir/plenary.toml" serve >"$dir/stdout" 2>"$dir/stderr" </dev/null &
    dpid=$!
    until grep -q '^plenary: listening' "$dir/stdout" 2>/dev/null; do sleep 0.1; done
    python3 "$BENCH/procstat.py" threads "$dpid" >"$dir/cpu0.json"
    t0=$(date +%s.%N)
    rate=$(lg "$SMTP_PORT" "$N")
    t1=$(date +%s.%N)
    python3 "$BENCH/procstat.py" threads "$dpid" >"$dir/cpu1.json"
    if [ -n "${NO_SEARCH:-}" ]; then sleep 0.1; else until [ "$(total)" = "$N" ]; do sleep 0.05; done; fi
    t2=$(date +%s.%N)
    python3 "$BENCH/procstat.py" threads "$dpid" >"$dir/cpu2.json"
    kill "$dpid"; wait "$dpid" 2>/dev/null || true
    cpu=$(python3 "$BENCH/procstat.py" cpudiff "$dir/cpu0.json" "$dir/cpu1.json")
    cpu2=$(python3 "$BENCH/procstat.py" cpudiff "$dir/cpu0.json" "$dir/cpu2.json")
    python3 - "$bin" "$rate" "${sink:-0}" "$t0" "$t1" "$t2" "$cpu" "$cpu2" "$N" <<'EOF'
import json, sys
bin_, rate, sink, t0, t1, t2, cpu, cpu2, n = sys.argv[1:]
rate, sink, n = float(rate), float(sink), int(n)
t0, t1, t2 = float(t0), float(t1), float(t2)
cpu, cpu2 = json.loads(cpu), json.loads(cpu2)
ratio = f"{100 * rate / sink:.1f} %" if sink else "-"
print(f"  {bin_}: {rate:.0f} msgs/s ({ratio}), searchable {n / (t2 - t0):.0f} msgs/s "
      f"(+{t2 - t1:.2f} s); CPU {1e6 * cpu['total'] / n:.0f} us/msg during load, "
      f"{1e6 * cpu2['total'] / n:.0f} until searchable")
print("    " + ", ".join(f"{k} {v}" for k, v in cpu2.items()))
EOF
  done
done
