#!/usr/bin/env bash
# Fan-out benchmark, GNU Mailman 3 side: one ~3 KB post to a list of N members, delivered
# by Mailman core (Debian's mailman3, SQLite) to Postfix's smtp-sink on 127.0.0.1.
#
#   bench/fanout/mailman3.sh N            N = member count (1000, 10000, 100000)
#
# stdout: one JSON line per mode, e.g.
#   {"system":"mailman3","mode":"personalized","members":N,"seconds":S,
#    "recipients_per_s":R,"delivered":D,"messages":M,"timed_out":false,...}
# stderr: progress. Exit status 0 if every mode ran (a hit cap is reported, not an error).
#
# Modes (MODES, default "bulk personalized", run in that order on the same list):
#   bulk          personalize=none: one shared copy, max_recipients (500) RCPTs per transaction
#   personalized  personalize=$MM_PERSONALIZE (individual) + VERP: one copy and one SMTP
#                 transaction per recipient (Mailman's Deliver agent, default one out runner)
# Each mode: inject over LMTP, clock from just before the LMTP connect to the moment the sink
# has the last recipient (smtp-sink -D dump, X-Rcpt-Args records counted every 2 ms).
#
# Knobs: MODES, MM_PERSONALIZE (individual|full), CAP (1200 s wait per mode),
#   POST_BYTES (3000), MM_OUT_INSTANCES (1; power of 2), MM_SLEEP (runner sleep_time, 1s),
#   KEEP=1 (keep the scratch dir), WORK (parent of the scratch dir, /tmp).
# Needs root on Debian 12: installs mailman3/postfix if missing (no MTA configured, no
# service started by us). Mailman runs from a throwaway config/var dir under a mktemp dir;
# every process started here is stopped by PID at exit.
set -euo pipefail

N=${1:?usage: mailman3.sh MEMBERS}
[[ "$N" =~ ^[0-9]+$ ]] || { echo "members must be a number" >&2; exit 2; }
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MODES=${MODES:-"bulk personalized"}
MM_PERSONALIZE=${MM_PERSONALIZE:-individual}
CAP=${CAP:-1200}
POST_BYTES=${POST_BYTES:-3000}
MM_OUT_INSTANCES=${MM_OUT_INSTANCES:-1}
MM_SLEEP=${MM_SLEEP:-1s}
WORK=${WORK:-/tmp}
LIST=fanout@lists.example.org
PY=/usr/bin/python3        # Debian's python: mailman lives in its dist-packages
export LC_ALL=C.UTF-8

log() { printf '[%s] mailman3.sh: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
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
# ---- packages -----------------------------------------------------------------------------
missing=()
for p in mailman3 postfix; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -q "${missing[@]}" >&2
fi
T_PKG=$(now)
INSTALL_S=$(elapsed "$T_SCRIPT" "$T_PKG")
MM_VERSION=$(dpkg-query -W -f='${Version}' mailman3)

# ---- scratch dir, ports -------------------------------------------------------------------
S=$(mktemp -d "$WORK/mm3-fanout.XXXXXX")
chmod 755 "$S"                       # smtp-sink runs as nobody and appends to $S/sink/dump
mkdir -p "$S/sink"; chmod 777 "$S/sink"
read -r SINK_PORT LMTP_PORT <<<"$(python3 "$HERE/mm_fanout.py" freeport -n 2)"
SINK_PORT=${MM_SINK_PORT:-$SINK_PORT}
LMTP_PORT=${MM_LMTP_PORT:-$LMTP_PORT}

PIDS=()
MASTER=
cleanup() {
  local rc=$? p
  if [ -n "$MASTER" ] && kill -0 "$MASTER" 2>/dev/null; then
    # the master stops its runners on SIGTERM; the runners were recorded too
    kill "$MASTER" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$MASTER" 2>/dev/null || break; sleep 0.2; done
  fi
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in $MASTER "${PIDS[@]:-}"; do
    [ -n "$p" ] && kill -0 "$p" 2>/dev/null && kill -9 "$p" 2>/dev/null || true
  done
  if [ "${KEEP:-0}" = 1 ]; then log "scratch dir kept: $S"; else rm -rf "$S"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cat >"$S/mailman.cfg" <<EOF
[mailman]
site_owner: admin@example.org
layout: fanout

[paths.fanout]
var_dir: $S/var
bin_dir: /usr/lib/mailman3/bin

[database]
class: mailman.database.sqlite.SQLiteDatabase
url: sqlite:///\$DATA_DIR/mailman.db

[mta]
incoming: mailman.mta.null.NullMTA
outgoing: mailman.mta.deliver.deliver
smtp_host: 127.0.0.1
smtp_port: $SINK_PORT
lmtp_host: 127.0.0.1
lmtp_port: $LMTP_PORT
max_recipients: 500
verp_personalized_deliveries: yes

[runner.master]
sleep_time: $MM_SLEEP

[runner.out]
instances: $MM_OUT_INSTANCES

# not used here: no REST clients, and nntp's gatenews fails under --run-as-root
[runner.rest]
start: no

[runner.nntp]
start: no
EOF
MMCMD=(mailman --run-as-root -C "$S/mailman.cfg")
log "mailman3 $MM_VERSION, scratch $S, sink :$SINK_PORT, lmtp :$LMTP_PORT, N=$N, modes: $MODES"

# ---- list + members (before the runners start: no contention) -------------------------------
first_mode=${MODES%% *}
p0=none; [ "$first_mode" = personalized ] && p0=$MM_PERSONALIZE
T0=$(now)
SETUP_J=$(timeout 1800 "$PY" "$HERE/mm_fanout.py" setup --config "$S/mailman.cfg" --list "$LIST" \
  --members "$N" --personalize "$p0")
T_SETUP=$(now)
log "list + $N members: $(elapsed "$T0" "$T_SETUP")s  $SETUP_J"

# ---- sink + mailman ---------------------------------------------------------------------
/usr/sbin/smtp-sink -u nobody -D "$S/sink/dump" 127.0.0.1:"$SINK_PORT" 1024 </dev/null >"$S/smtp-sink.log" 2>&1 &
PIDS+=("$!")
wait_port "$SINK_PORT" 30

"${MMCMD[@]}" start </dev/null >"$S/start.log" 2>&1 || { cat "$S/start.log" >&2; exit 1; }
for _ in $(seq 1 300); do [ -s "$S/var/master.pid" ] && break; sleep 0.1; done
MASTER=$(cat "$S/var/master.pid")
wait_port "$LMTP_PORT" 120
sleep 2   # let every runner finish importing before the clock starts
for p in $(ps -o pid= --ppid "$MASTER"); do PIDS+=("$p"); done
T_START=$(now)
log "mailman master $MASTER with ${#PIDS[@]} processes (sink + runners) up in $(elapsed "$T_SETUP" "$T_START")s"
SETUP_S=$(elapsed "$T_PKG" "$T_START")

# ---- modes ------------------------------------------------------------------------------
rc=0
cur=$p0
for mode in $MODES; do
  case $mode in
    bulk) want=none ;;
    personalized) want=$MM_PERSONALIZE ;;
    *) log "unknown mode $mode"; rc=2; continue ;;
  esac
  if [ "$want" != "$cur" ]; then
    timeout 120 "$PY" "$HERE/mm_fanout.py" mode --config "$S/mailman.cfg" --list "$LIST" --personalize "$want"
    cur=$want
  fi
  python3 "$HERE/mm_fanout.py" drain --queue-dir "$S/var/queue" --timeout 120 >/dev/null || log "queues not empty before $mode"
  log "---- $mode (personalize=$want): posting to $N members, cap ${CAP}s"
  read -r la1 _ </proc/loadavg
  extra="{\"load1_before\":$la1,\"personalize\":\"$want\",\"verp\":$([ "$want" = none ] && echo false || echo true),\"mailman_version\":\"$MM_VERSION\",\"out_runners\":$MM_OUT_INSTANCES,\"runner_sleep\":\"$MM_SLEEP\",\"install_s\":$INSTALL_S,\"setup_s\":$SETUP_S,\"subscribe\":$SETUP_J}"
  j=$(timeout $((CAP + 120)) python3 "$HERE/mm_fanout.py" post --lmtp-port "$LMTP_PORT" --list "$LIST" \
        --expect "$N" --dump "$S/sink/dump" --timeout "$CAP" --size "$POST_BYTES" --tag "$mode" \
        --extra "$extra") || { log "post failed ($mode)"; rc=1; continue; }
  echo "$j"
  log "$mode: $j"
  if grep -q '"timed_out":true' <<<"$j"; then
    log "$mode hit the ${CAP}s cap; later modes would compete with the unfinished delivery: stopping here"
    break
  fi
done
ls "$S/var/queue/shunt" "$S/var/queue/bad" 2>/dev/null | grep -c pck | sed 's/^/shunt+bad queue files: /' >&2 || true
grep -E 'ERROR|Traceback' "$S/var/logs/mailman.log" 2>/dev/null | head -5 >&2 || true
log "total $(elapsed "$T_SCRIPT" "$(now)")s"
exit $rc
