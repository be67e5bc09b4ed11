#!/usr/bin/env bash
# Fan-out benchmark, Plenary side: one ~3 KB post to a list of N members, delivered by
# `plenary serve` to Postfix's smtp-sink on 127.0.0.1 (the counterpart of mailman3.sh).
#
#   bench/fanout/plenary.sh N            N = member count (1000, 10000, 100000)
#
# stdout: one JSON line, e.g.
#   {"system":"plenary","mode":"personalized+dkim","members":N,"seconds":S,
#    "recipients_per_s":R,"delivered":D,"timed_out":false,"first_rcpt_s":F,"setup_s":...,
#    "peak_rss_mb":M,...}
# stderr: progress. Exit status 0 if the run worked (a hit cap is reported, not an error);
# 4 if the sampled copies failed the checks (DKIM-Signature, distinct List-Unsubscribe, VERP).
#
# What is measured: Plenary sends one SMTP transaction per recipient (VERP envelope sender,
# per-recipient one-click List-Unsubscribe, per-copy RSA-2048 DKIM signature). The clock runs
# from just before the SMTP connect that posts the message to the moment the sink has the last
# recipient (smtp-sink -D dump, X-Rcpt-Args records counted every 2 ms: mm_fanout.py's
# counter). The list and its members are created with the offline CLI before the daemon
# starts; that setup is timed separately (setup_s) and is not part of the figure.
# peak_rss_mb is the daemon's VmHWM right after the last recipient arrived (its whole life).
# The dump keeps message data, so a sample of copies is checked afterwards (pl_fanout.py
# verify): "verify" in the JSON.
#
# Knobs: CONCURRENCY (16, [fanout] concurrency), BATCH (500), CAP (1200 s wait),
#   POST_BYTES (3000), LOG_LEVEL (warn; the daemon's stderr goes to the scratch dir and its
#   WARN/ERROR lines are echoed to stderr), NO_BUILD=1 (never run cargo; only warn if the
#   binary is older than the sources), KEEP=1 (keep the scratch dir), WORK (parent of the
#   scratch dir, /tmp), VERIFY=0 (skip the dump check), ARC=1 (also ARC-seal the post,
#   [arc] enabled, its DNS checks answered by tests/py/dns_server.py with an empty zone),
#   BIN (the plenary binary; default target/release/plenary, built if stale),
#   SINK=count (smtp-sink -c instead of -D: recipients are counted from the sink's running
#   counter and no message data is written to disk, so the co-located sink takes less of the
#   shared CPUs; nothing is left to verify, so VERIFY is off in this mode).
# Needs postfix (smtp-sink) and openssl; run as root (smtp-sink -u nobody, like mailman3.sh).
# Every process started here is stopped by PID at exit.
set -euo pipefail

N=${1:?usage: plenary.sh MEMBERS}
[[ "$N" =~ ^[0-9]+$ ]] || { echo "members must be a number" >&2; exit 2; }
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CONCURRENCY=${CONCURRENCY:-16}
BATCH=${BATCH:-500}
CAP=${CAP:-1200}
POST_BYTES=${POST_BYTES:-3000}
LOG_LEVEL=${LOG_LEVEL:-warn}
WORK=${WORK:-/tmp}
LIST=bench@lists.example.org
PY=/usr/bin/python3
BIN=${BIN:-$ROOT/target/release/plenary}
export LC_ALL=C.UTF-8

log() { printf '[%s] plenary.sh: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", b-a}'; }
wait_port() {  # port timeout_s
  local i=0
  while ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do
    i=$((i + 1)); [ $i -gt $(($2 * 10)) ] && { log "port $1 not up after $2s"; return 1; }
    sleep 0.1
  done
}

T_SCRIPT=$(now)
[ -x /usr/sbin/smtp-sink ] || { log "smtp-sink missing: apt-get install postfix (preseed 'No configuration', see bench/README.md)"; exit 1; }
command -v openssl >/dev/null || { log "openssl missing"; exit 1; }

# ---- binary -----------------------------------------------------------------------------
stale() {  # true if the binary is missing or older than a source file of the workspace
  [ -x "$BIN" ] || return 0
  [ -n "$(find "$ROOT/crates" "$ROOT/Cargo.toml" "$ROOT/Cargo.lock" -newer "$BIN" \
          \( -name '*.rs' -o -name 'Cargo.*' -o -name '*.html' -o -name '*.css' \) -print -quit 2>/dev/null)" ]
}
BIN_STALE=false
if stale; then
  if [ "${NO_BUILD:-0}" = 1 ]; then
    [ -x "$BIN" ] || { log "$BIN missing and NO_BUILD=1"; exit 1; }
    log "WARNING: $BIN is older than the sources (NO_BUILD=1: not rebuilding)"
    BIN_STALE=true
  else
    log "building $BIN"
    (cd "$ROOT" && cargo build --release -p plenary) >&2
  fi
fi

# ---- scratch dir, sink --------------------------------------------------------------------
S=$(mktemp -d "$WORK/plenary-fanout.XXXXXX")
chmod 755 "$S"                       # smtp-sink runs as nobody and appends to $S/sink/dump
mkdir -p "$S/sink" "$S/data"; chmod 777 "$S/sink"
SINK_PORT=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

PIDS=()
DPID=
cleanup() {
  local rc=$? p
  if [ -n "$DPID" ] && kill -0 "$DPID" 2>/dev/null; then
    kill "$DPID" 2>/dev/null || true      # SIGTERM: graceful stop (flushes the store)
    for _ in $(seq 1 100); do kill -0 "$DPID" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$DPID" 2>/dev/null && { log "plenary $DPID did not stop in 20s: SIGKILL"; kill -9 "$DPID" 2>/dev/null || true; }
  fi
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${PIDS[@]:-}"; do
    [ -n "$p" ] && kill -0 "$p" 2>/dev/null && kill -9 "$p" 2>/dev/null || true
  done
  if [ "${KEEP:-0}" = 1 ]; then log "scratch dir kept: $S"; else rm -rf "$S"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- DKIM key, config ---------------------------------------------------------------------
T0=$(now)
openssl genrsa -out "$S/dkim.pem" 2048 2>/dev/null
openssl rsa -in "$S/dkim.pem" -pubout -out "$S/dkim.pub" 2>/dev/null
chmod 600 "$S/dkim.pem"
T_KEY=$(now)
cat >"$S/plenary.toml" <<EOF
[data]
dir = "$S/data"
min_free_mb = 0

[smtp]
listen = "127.0.0.1:0"

[web]
listen = "127.0.0.1:0"
base_url = "https://lists.example.org"

[relay]
host = "127.0.0.1"
port = $SINK_PORT

[fanout]
concurrency = $CONCURRENCY
batch = $BATCH

[dkim]
selector = "bench"
rsa_key = "$S/dkim.pem"

[log]
level = "$LOG_LEVEL"
EOF
MODE=personalized+dkim; ARC_FLAG=
if [ "${ARC:-0}" = 1 ]; then
  MODE=personalized+dkim+arc; ARC_FLAG=--arc
  echo '{}' >"$S/zone.json"
  "$PY" "$ROOT/tests/py/dns_server.py" "$S/zone.json" "$S/dns" >"$S/dns.out" 2>&1 &
  PIDS+=("$!")
  for _ in $(seq 1 50); do grep -q 'dns listening' "$S/dns.out" 2>/dev/null && break; sleep 0.1; done
  DNS_PORT=$(awk '/dns listening/ {print $3}' "$S/dns.out")
  [ -n "$DNS_PORT" ] || { log "the test DNS server did not start"; exit 1; }
  printf '\n[dns]\nservers = "127.0.0.1:%s"\ntimeout_secs = 2\n\n[arc]\nenabled = true\nauthserv_id = "lists.example.org"\n' \
    "$DNS_PORT" >>"$S/plenary.toml"
fi
P=("$BIN" --config "$S/plenary.toml")
log "$("$BIN" --version), scratch $S, sink :$SINK_PORT, N=$N, concurrency=$CONCURRENCY batch=$BATCH"

# ---- list + members, offline (the daemon is not running) ------------------------------------
"$PY" "$HERE/pl_fanout.py" members "$N" "$S/members.csv"
T_CSV=$(now)
"${P[@]}" list create "$LIST" --name Bench >"$S/setup.log" 2>&1
"${P[@]}" list set "$LIST" posting=open >>"$S/setup.log" 2>&1
T_LIST=$(now)
timeout 3600 "${P[@]}" member add "$LIST" "$S/members.csv" >>"$S/setup.log" 2>&1 \
  || { cat "$S/setup.log" >&2; exit 1; }
T_SETUP=$(now)
LIST_S=$(elapsed "$T_CSV" "$T_LIST"); MEMBERS_S=$(elapsed "$T_LIST" "$T_SETUP")
SETUP_S=$(elapsed "$T_CSV" "$T_SETUP")
log "list create+set ${LIST_S}s, member add ($N) ${MEMBERS_S}s: $(tail -n 1 "$S/setup.log")"
DB_MB=$(du -sm "$S/data" | cut -f1)

# ---- sink + daemon --------------------------------------------------------------------------
SINK=${SINK:-dump}
case "$SINK" in
  dump) SINK_ARGS=(-D "$S/sink/dump"); COUNT_ARGS=(--dump "$S/sink/dump"); SINK_OUT="$S/smtp-sink.log" ;;
  count) SINK_ARGS=(-c); COUNT_ARGS=(--count "$S/sink/count"); SINK_OUT="$S/sink/count"; VERIFY=0 ;;
  *) log "SINK must be dump or count"; exit 2 ;;
esac
/usr/sbin/smtp-sink -u nobody "${SINK_ARGS[@]}" 127.0.0.1:"$SINK_PORT" 1024 </dev/null >"$SINK_OUT" 2>&1 &
SINK_PID=$!
PIDS+=("$SINK_PID")
wait_port "$SINK_PORT" 30

T_START=$(now)
"${P[@]}" serve </dev/null >"$S/serve.out" 2>"$S/serve.err" &
DPID=$!
SMTP=
for _ in $(seq 1 600); do
  SMTP=$(sed -n 's/^plenary: listening smtp=\([^ ]*\) .*/\1/p' "$S/serve.out" 2>/dev/null | head -n 1)
  [ -n "$SMTP" ] && break
  kill -0 "$DPID" 2>/dev/null || { log "plenary serve exited"; cat "$S/serve.err" >&2; exit 1; }
  sleep 0.1
done
[ -n "$SMTP" ] || { log "no 'listening' line from plenary serve in 60s"; cat "$S/serve.err" >&2; exit 1; }
T_UP=$(now)
log "plenary serve (pid $DPID) listening smtp=$SMTP after $(elapsed "$T_START" "$T_UP")s"
sleep 1   # let start-up work (index open, first fan-out poll) settle before the clock starts

# ---- post --------------------------------------------------------------------------------
read -r la1 _ </proc/loadavg
extra=$(printf '{"sink":"%s","concurrency":%s,"batch":%s,"load1_before":%s,"keygen_s":%s,"setup_s":%s,"list_s":%s,"members_s":%s,"data_mb_after_setup":%s,"start_s":%s,"binary_stale":%s}' \
  "$SINK" "$CONCURRENCY" "$BATCH" "$la1" "$(elapsed "$T0" "$T_KEY")" "$SETUP_S" "$LIST_S" "$MEMBERS_S" \
  "$DB_MB" "$(elapsed "$T_START" "$T_UP")" "$BIN_STALE")
log "---- posting to $N members, cap ${CAP}s"
j=$(timeout $((CAP + 120)) "$PY" "$HERE/pl_fanout.py" post --smtp "$SMTP" --pid "$DPID" \
      --sink-pid "$SINK_PID" --list "$LIST" --expect "$N" "${COUNT_ARGS[@]}" \
      --timeout "$CAP" --size "$POST_BYTES" --extra "$extra" --mode "$MODE") || { log "post failed"; exit 1; }

# ---- checks on the copies -------------------------------------------------------------------
rc=0
if [ "${VERIFY:-1}" = 1 ]; then
  v=$("$PY" "$HERE/pl_fanout.py" verify --dump "$S/sink/dump" --pubkey "$S/dkim.pub" $ARC_FLAG) || rc=4
  log "verify: $v"
  j="${j%\}},\"verify\":$v}"
fi
# the daemon's WARN/ERROR lines (log level $LOG_LEVEL)
nwarn=$(grep -cE 'WARN|ERROR' "$S/serve.err" || true)
j="${j%\}},\"log_level\":\"$LOG_LEVEL\",\"daemon_warn_error_lines\":$nwarn}"
if [ "$nwarn" -gt 0 ]; then
  log "daemon WARN/ERROR lines ($nwarn), first 10:"
  grep -E 'WARN|ERROR' "$S/serve.err" | head -n 10 >&2
fi
echo "$j"
log "result: $j"
log "total $(elapsed "$T_SCRIPT" "$(now)")s"
exit $rc
