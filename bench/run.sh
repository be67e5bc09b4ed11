#!/usr/bin/env bash
# Plenary benchmark suite: one entry point. See bench/README.md.
#
#   bench/run.sh                      everything (about 6-8 minutes on 2 vCPUs)
#   ONLY="ingest" bench/run.sh        one part: ingest | import | web (web needs import's data)
#
# Installs nothing: it checks the tools and says which Debian packages are missing.
# Builds target/release/plenary and bench/loadgen, runs on 127.0.0.1 only, writes
# bench/results/*.jsonl, bench/results/logs/ and bench/results/summary.md.
# Scratch data (daemon data dirs, public-inbox inbox, prepared corpora) goes to $WORK.
# No timing assertions: the exit status only says whether the runs themselves worked.
set -euo pipefail

BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH/.." && pwd)
export LC_ALL=C.UTF-8

# ---- knobs -------------------------------------------------------------------------------
WORK=${WORK:-/tmp/plenary-bench}
RES=${RES:-$BENCH/results}
CORPUS_DIR=${CORPUS_DIR:-/work/shared/corpora/twisted-pipermail}
ONLY=${ONLY:-"ingest import web"}
N=${N:-20000}                         # messages per Plenary ingest run (unique Message-IDs)
CONCURRENCY=${CONCURRENCY:-"16 10"}   # SMTP sessions
SINK_COUNT=${SINK_COUNT:-100000}      # messages per smtp-sink run (input cycled; sink keeps nothing)
SMTP_PORT=${SMTP_PORT:-25251}
WEB_PORT=${WEB_PORT:-18081}
SINK_PORT=${SINK_PORT:-25260}
WRK_SECS=${WRK_SECS:-10}
WRK_CONNS=${WRK_CONNS:-"1 4 10"}
IDLE_SECS=${IDLE_SECS:-10}
PUBLIC_INBOX=${PUBLIC_INBOX:-1}       # 0 skips the public-inbox comparison
IMPORT_RUNS=${IMPORT_RUNS:-3}         # Plenary imports of the archive (single runs vary by ~20 %)
TOPUP=${TOPUP:-34000}                 # synthetic messages added after the import so the web/memory
                                      # parts see ~90k messages (twisted dedupes to 56k); 0 = none
ANCHORS=${ANCHORS:-/work/shared/bench-anchors}
LIST=bench@lists.example.org
ILIST=twisted@lists.example.org
SLIST=synth@lists.example.org
TOKEN=plenarybenchtoken

# The binary under test is a copy taken right after the build, so a rebuild of the tree
# during the run (someone else working in crates/) cannot change it half-way.
PLENARY=$WORK/plenary-under-test
LOADGEN=$BENCH/loadgen/target/release/plenary-loadgen
LOGS=$RES/logs
mkdir -p "$WORK" "$RES" "$LOGS"

# ---- helpers -----------------------------------------------------------------------------
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -0 "$p" 2>/dev/null && kill -9 "$p" 2>/dev/null || true; done
  return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >>"$LOGS/run.log"; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.3f", b-a}'; }
record() { local f=$1; shift; printf '%s\n' "$*" >>"$RES/$f.jsonl"; }
# cmd DESCRIPTION -- the exact command line, for summary.md
cmdlog() { printf '%s\n' "$*" >>"$RES/commands.txt"; }
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {
  local i=0
  while port_free "$1"; do
    i=$((i + 1)); [ $i -gt 300 ] && { log "port $1 not up after 30s"; return 1; }
    sleep 0.1
  done
}
jget() { python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d.get(sys.argv[2], ""))' "$1" "$2"; }

# ---- tools -------------------------------------------------------------------------------
check_tools() {
  local missing=() pkgs=() t
  need() {  # binary debian-package
    if ! command -v "$1" >/dev/null 2>&1 && [ ! -x "$1" ]; then missing+=("$1"); pkgs+=("$2"); fi
  }
  need cargo "(rustup, not a Debian package)"
  need python3 python3
  need curl curl
  need awk gawk
  need /usr/bin/time time
  case " $ONLY " in *" ingest "*) need /usr/sbin/smtp-sink postfix; need /usr/sbin/smtp-source postfix ;; esac
  case " $ONLY " in *" web "*) need wrk wrk ;; esac
  if [ "$PUBLIC_INBOX" = 1 ] && [[ " $ONLY " == *" import "* ]]; then
    need public-inbox-init public-inbox; need perl perl; need git git; need xapian-delve xapian-tools
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    log "missing tools: ${missing[*]}"
    log "install with: apt-get install -y $(printf '%s\n' "${pkgs[@]}" | grep -v '^(' | sort -u | tr '\n' ' ')"
    log "(postfix: preseed 'postfix postfix/main_mailer_type select No configuration' so no MTA starts;"
    log " PUBLIC_INBOX=0 skips the public-inbox comparison)"
    exit 1
  fi
  for p in $SMTP_PORT $WEB_PORT $SINK_PORT; do
    port_free "$p" || { log "port 127.0.0.1:$p is in use; set SMTP_PORT/WEB_PORT/SINK_PORT"; exit 1; }
  done
}

# ---- Plenary daemon ----------------------------------------------------------------------
# write_config DIR [extra toml lines...]
write_config() {
  local dir=$1; shift
  mkdir -p "$dir"
  {
    echo "[data]"
    echo "dir = \"$dir/data\""
    echo "[smtp]"
    echo "listen = \"127.0.0.1:$SMTP_PORT\""
    echo "max_connections_per_ip = 256"
    echo "max_connections = 512"
    echo "[web]"
    echo "listen = \"127.0.0.1:$WEB_PORT\""
    echo "base_url = \"http://127.0.0.1:$WEB_PORT\""
    echo "[search]"
    for l in "$@"; do echo "$l"; done
    echo "[log]"
    echo "level = \"info\""
  } >"$dir/plenary.toml"
}

DPID=
start_daemon() {  # DIR
  local dir=$1 i=0
  "$PLENARY" --config "$dir/plenary.toml" serve >"$dir/stdout" 2>"$dir/stderr" </dev/null &
  DPID=$!; PIDS+=("$DPID")
  while ! grep -q '^plenary: listening' "$dir/stdout" 2>/dev/null; do
    kill -0 "$DPID" 2>/dev/null || { log "plenary exited: $(tail -5 "$dir/stderr")"; return 1; }
    i=$((i + 1)); [ $i -gt 600 ] && { log "plenary not ready after 60s"; return 1; }
    sleep 0.1
  done
}
stop_daemon() {  # [SIGNAL]  (KILL for a throw-away daemon whose indexer sleeps in a long commit_delay)
  [ -n "$DPID" ] || return 0
  exec 4>&2 2>/dev/null   # keep bash's "Killed" job notice out of the output
  kill -"${1:-TERM}" "$DPID" 2>/dev/null || true
  for _ in $(seq 1 300); do kill -0 "$DPID" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$DPID" 2>/dev/null && { log "plenary did not stop in 30s; killing" 2>&4; kill -9 "$DPID" 2>/dev/null || true; }
  wait "$DPID" 2>/dev/null || true
  exec 2>&4 4>&-
  DPID=
}

# perf counters (context switches, CPU time, fsync calls) of one process during a load;
# optional: skipped when perf is missing or PERF=0.
PERF_PID=
perf_start() {  # PID OUTFILE
  PERF_PID=
  [ "${PERF:-1}" = 1 ] && command -v perf >/dev/null 2>&1 || return 0
  local ev="context-switches,task-clock,syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync"
  perf stat -e "$ev" -x, -o "$2" -p "$1" >/dev/null 2>&1 </dev/null &
  PERF_PID=$!; PIDS+=("$PERF_PID")
  sleep 0.3
  kill -0 "$PERF_PID" 2>/dev/null || { PERF_PID=; return 0; }
  cmdlog "perf stat -e $ev -x, -p <server pid>   # during the load"
}
PERF_JSON=null
perf_stop() {  # OUTFILE -> sets PERF_JSON (a JSON object, or null)
  PERF_JSON=null
  [ -n "$PERF_PID" ] || return 0
  kill -INT "$PERF_PID" 2>/dev/null || true
  wait "$PERF_PID" 2>/dev/null || true
  PERF_PID=
  PERF_JSON=$(python3 - "$1" <<'EOF'
import json, sys
out = {}
try:
    for line in open(sys.argv[1]):
        p = line.strip().split(",")
        if len(p) < 3 or not p[0] or p[0].startswith("<"):
            continue
        name = p[2].replace("syscalls:sys_enter_", "")
        out[name.replace("-", "_")] = float(p[0])
except OSError:
    pass
print(json.dumps(out) if out else "null")
EOF
)
}
search_total() {  # query [list]
  local url="http://127.0.0.1:$WEB_PORT/api/v1/search?q=$1"
  [ -n "${2:-}" ] && url="$url&list=$2"
  curl -s --max-time 5 "$url" | python3 -c 'import json,sys
try: print(json.load(sys.stdin).get("total", -1))
except Exception: print(-1)'
}

# ---- parts -------------------------------------------------------------------------------
build() {
  log "building plenary and the load generator"
  cmdlog "cd $ROOT && cargo build --release -p plenary"
  (cd "$ROOT" && cargo build --release -p plenary) >"$LOGS/build.log" 2>&1 || { tail -20 "$LOGS/build.log"; exit 1; }
  cmdlog "cd $ROOT && cargo build --release --manifest-path bench/loadgen/Cargo.toml"
  (cd "$ROOT" && cargo build --release --manifest-path bench/loadgen/Cargo.toml) >>"$LOGS/build.log" 2>&1 || { tail -20 "$LOGS/build.log"; exit 1; }
  cmdlog "cp target/release/plenary $PLENARY   # snapshot of the binary under test"
  cp "$ROOT/target/release/plenary" "$PLENARY.tmp" && mv "$PLENARY.tmp" "$PLENARY"
  # provenance: commit, uncommitted changes to the sources (saved as a patch), binary hash
  local dirty diffsha=""
  dirty=$(cd "$ROOT" && git status --porcelain -- crates Cargo.toml Cargo.lock 2>/dev/null | wc -l)
  if [ "$dirty" -gt 0 ]; then
    (cd "$ROOT" && git diff HEAD -- crates Cargo.toml Cargo.lock) >"$LOGS/uncommitted-sources.diff"
    diffsha=$(sha256sum "$LOGS/uncommitted-sources.diff" | cut -c1-16)
  else
    rm -f "$LOGS/uncommitted-sources.diff"
  fi
  {
    echo "plenary commit: $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null) ($(cd "$ROOT" && git log -1 --format=%s 2>/dev/null | cut -c1-70))"
    if [ "$dirty" -gt 0 ]; then
      echo "uncommitted source changes: $dirty files, patch in logs/uncommitted-sources.diff (sha256 $diffsha...)"
    else
      echo "uncommitted source changes: none"
    fi
    echo "binary under test: sha256 $(sha256sum "$PLENARY" | cut -c1-16)..., built $(date -u -r "$ROOT/target/release/plenary" '+%F %T') UTC"
  } >>"$RES/env.txt"
}

prep_smtp() {
  [ -s "$WORK/smtp-msgs-n$N.bin" ] && [ -s "$WORK/smtp-msgs-n$N.json" ] && return 0
  log "preparing $N wire-ready ~4 KB messages"
  cmdlog "python3 bench/corpus.py smtp --n $N --token $TOKEN --out $WORK/smtp-msgs-n$N.bin $CORPUS_DIR/*/*.txt.gz"
  python3 "$BENCH/corpus.py" smtp --n "$N" --token "$TOKEN" --out "$WORK/smtp-msgs-n$N.bin" "$CORPUS_DIR"/*/*.txt.gz \
    >"$WORK/smtp-msgs-n$N.json"
}

loadgen() {  # label port conc count [extra args]  -> prints the JSON object
  local label=$1 port=$2 c=$3 count=$4; shift 4
  local out
  cmdlog "bench/loadgen/target/release/plenary-loadgen --messages $WORK/smtp-msgs-n$N.bin --port $port -c $c --count $count --rcpt $LIST --max-seconds 120 --label $label $*"
  out=$(timeout 180 "$LOADGEN" --messages "$WORK/smtp-msgs-n$N.bin" --port "$port" -c "$c" --count "$count" \
        --rcpt "$LIST" --max-seconds 120 --label "$label" "$@" 2>>"$LOGS/ingest.log")
  tail -1 "$LOGS/ingest.log" >&2
  echo "$out" | sed -n 's/^JSON //p'
}

part_ingest() {
  prep_smtp
  local stats; stats=$(cat "$WORK/smtp-msgs-n$N.json")
  log "corpus: $stats"
  : >"$RES/ingest.jsonl"
  record ingest "{\"kind\":\"corpus\",\"stats\":$stats}"

  # --- smtp-sink: protocol-only ceiling, same load generator ---
  log "smtp-sink on 127.0.0.1:$SINK_PORT"
  cmdlog "/usr/sbin/smtp-sink -u nobody 127.0.0.1:$SINK_PORT 1024"
  /usr/sbin/smtp-sink -u nobody "127.0.0.1:$SINK_PORT" 1024 </dev/null >"$LOGS/smtp-sink.log" 2>&1 &
  local spid=$!; PIDS+=("$spid")
  wait_port "$SINK_PORT"
  local c j pf
  for c in $CONCURRENCY; do
    perf_start "$spid" "$WORK/perf-sink-c$c.csv"
    j=$(loadgen "smtp-sink" "$SINK_PORT" "$c" "$SINK_COUNT" --repeat)
    perf_stop "$WORK/perf-sink-c$c.csv"; pf=$PERF_JSON
    record ingest "{\"kind\":\"smtp\",\"server\":\"smtp-sink\",\"result\":$j,\"perf\":$pf}"
  done
  c=${CONCURRENCY%% *}
  j=$(loadgen "smtp-sink-pipelined" "$SINK_PORT" "$c" "$SINK_COUNT" --repeat --pipeline)
  record ingest "{\"kind\":\"smtp\",\"server\":\"smtp-sink\",\"variant\":\"pipelined\",\"result\":$j}"
  # Postfix's own client, as a check that the load generator is not the limit
  local t0 t1 w
  cmdlog "/usr/sbin/smtp-source -s $c -m $SINK_COUNT -l 4096 -f sender@example.org -t $LIST -M bench.example.org 127.0.0.1:$SINK_PORT"
  t0=$(now)
  timeout 120 /usr/sbin/smtp-source -s "$c" -m "$SINK_COUNT" -l 4096 -f sender@example.org -t "$LIST" \
    -M bench.example.org "127.0.0.1:$SINK_PORT" >>"$LOGS/ingest.log" 2>&1
  t1=$(now); w=$(elapsed "$t0" "$t1")
  log "smtp-source -s $c -> smtp-sink: $SINK_COUNT msgs in ${w}s = $(awk -v n="$SINK_COUNT" -v w="$w" 'BEGIN{printf "%.0f", n/w}') msgs/s"
  record ingest "{\"kind\":\"smtp-source\",\"server\":\"smtp-sink\",\"sessions\":$c,\"msgs\":$SINK_COUNT,\"wall_s\":$w,\"msgs_per_s\":$(awk -v n="$SINK_COUNT" -v w="$w" 'BEGIN{printf "%.1f", n/w}')}"
  kill "$spid" 2>/dev/null || true; wait "$spid" 2>/dev/null || true

  # --- Plenary: fresh data dir and daemon per run ---
  local variant
  for variant in $(for c in $CONCURRENCY; do echo "$c:normal"; done) "${CONCURRENCY%% *}:pipelined" "${CONCURRENCY%% *}:index-deferred"; do
    c=${variant%%:*}; local v=${variant#*:}
    local dir="$WORK/ingest-c$c-$v"
    rm -rf "$dir"
    if [ "$v" = index-deferred ]; then write_config "$dir" "commit_delay_ms = 60000"; else write_config "$dir"; fi
    cmdlog "$PLENARY --config $dir/plenary.toml list create $LIST"
    "$PLENARY" --config "$dir/plenary.toml" list create "$LIST" >/dev/null
    # An open list with no members: every post is archived, indexed and becomes a delivery
    # job with nobody to deliver to (the default, members-only with hold, would hold them all).
    cmdlog "$PLENARY --config $dir/plenary.toml list set $LIST posting=open"
    "$PLENARY" --config "$dir/plenary.toml" list set "$LIST" posting=open >/dev/null
    cmdlog "$PLENARY --config $dir/plenary.toml serve"
    start_daemon "$dir"
    cmdlog "python3 bench/procstat.py threads <plenary pid>   # per-thread utime+stime before/after the load; procstat.py mem after it"
    python3 "$BENCH/procstat.py" threads "$DPID" >"$dir/cpu0.json"
    local extra=""; [ "$v" = pipelined ] && extra=--pipeline
    perf_start "$DPID" "$dir/perf.csv"
    t0=$(now)
    j=$(loadgen "plenary-$v" "$SMTP_PORT" "$c" "$N" $extra)
    t1=$(now)
    perf_stop "$dir/perf.csv"; pf=$PERF_JSON
    local mem_smtp; mem_smtp=$(python3 "$BENCH/procstat.py" mem "$DPID")
    python3 "$BENCH/procstat.py" threads "$DPID" >"$dir/cpu1.json"
    local ok dup want total=-1 tidx="" idx_rate=null idx_wall=null lag=null
    ok=$(jget "$j" sent_ok); dup=$(jget "$j" duplicates); want=$((ok - dup))
    if [ "$v" != index-deferred ]; then
      # durable AND searchable: poll the JSON search API until it reports every message
      cmdlog "curl -s 'http://127.0.0.1:$WEB_PORT/api/v1/search?q=$TOKEN&list=$LIST'   # polled every 50 ms until total == $want"
      local deadline=$(( $(date +%s) + 300 ))
      while :; do
        total=$(search_total "$TOKEN" "$LIST")
        [ "$total" = "$want" ] && { tidx=$(now); break; }
        [ "$(date +%s)" -gt "$deadline" ] && { log "index did not reach $want within 300 s (total=$total)"; break; }
        sleep 0.05
      done
      if [ -n "$tidx" ]; then
        idx_wall=$(elapsed "$t0" "$tidx"); lag=$(elapsed "$t1" "$tidx")
        idx_rate=$(awk -v n="$want" -v w="$idx_wall" 'BEGIN{printf "%.1f", n/w}')
      fi
    fi
    python3 "$BENCH/procstat.py" threads "$DPID" >"$dir/cpu2.json"
    local mem_end; mem_end=$(python3 "$BENCH/procstat.py" mem "$DPID")
    sleep "$IDLE_SECS"
    local mem_idle; mem_idle=$(python3 "$BENCH/procstat.py" mem "$DPID")
    local cpu_smtp cpu_all
    cpu_smtp=$(python3 "$BENCH/procstat.py" cpudiff "$dir/cpu0.json" "$dir/cpu1.json")
    cpu_all=$(python3 "$BENCH/procstat.py" cpudiff "$dir/cpu0.json" "$dir/cpu2.json")
    if [ "$v" = index-deferred ]; then
      log "plenary c=$c $v: (indexer idle by design) mem $mem_end"
    else
      log "plenary c=$c $v: indexed $total/$want, durable+indexed in ${idx_wall}s = $idx_rate msgs/s (index lag after last 250: ${lag}s); mem $mem_end"
    fi
    log "  idle ${IDLE_SECS}s later: $mem_idle"
    log "  daemon CPU s during SMTP load: $cpu_smtp"
    record ingest "{\"kind\":\"smtp\",\"server\":\"plenary\",\"variant\":\"$v\",\"result\":$j,\"indexed_total\":$total,\"expected_indexed\":$want,\"durable_indexed_wall_s\":$idx_wall,\"durable_indexed_msgs_per_s\":$idx_rate,\"index_lag_after_last_reply_s\":$lag,\"mem_after_smtp\":$mem_smtp,\"perf\":$pf,\"mem_end\":$mem_end,\"mem_idle_after\":$mem_idle,\"idle_s\":$IDLE_SECS,\"daemon_cpu_s_during_smtp\":$cpu_smtp,\"daemon_cpu_s_until_indexed\":$cpu_all,\"loadgen_wall_bash_s\":$(elapsed "$t0" "$t1")}"
    if [ "$v" = index-deferred ]; then stop_daemon KILL; else stop_daemon; fi
    du -sb "$dir/data" >>"$LOGS/ingest.log"
    rm -rf "$dir/data"
  done
}

part_import() {
  local dir="$WORK/import"
  rm -rf "$dir"; write_config "$dir"
  : >"$RES/import.jsonl"
  local files=("$CORPUS_DIR"/*/*.txt.gz)
  log "plenary import: ${#files[@]} pipermail files, $IMPORT_RUNS runs (the median counts)"
  local run
  for run in $(seq 1 "$IMPORT_RUNS"); do
    rm -rf "$dir/data"
    cmdlog "$PLENARY --config $dir/plenary.toml list create $ILIST   # run $run of $IMPORT_RUNS, fresh data dir"
    "$PLENARY" --config "$dir/plenary.toml" list create "$ILIST" >/dev/null
    cmdlog "/usr/bin/time -f '%e %M %U %S' $PLENARY --config $dir/plenary.toml import --list $ILIST $CORPUS_DIR/*/*.txt.gz"
    local t0 t1 w
    t0=$(now)
    timeout 900 /usr/bin/time -f "%e %M %U %S" -o "$dir/import.time" "$PLENARY" --config "$dir/plenary.toml" \
      import --list "$ILIST" "${files[@]}" >"$dir/import.out" 2>"$LOGS/plenary-import.stderr"
    t1=$(now); w=$(elapsed "$t0" "$t1")
    cat "$dir/import.out" >>"$LOGS/plenary-import.stderr"
    local line read_n imported dups rejected maxrss usr sys du_data du_index
    line=$(grep -m1 'messages read' "$dir/import.out")
    read_n=$(echo "$line" | awk '{print $1}')
    imported=$(echo "$line" | sed -n 's/.*: \([0-9]*\) imported.*/\1/p')
    dups=$(echo "$line" | sed -n 's/.* \([0-9]*\) duplicates.*/\1/p')
    rejected=$(echo "$line" | sed -n 's/.* \([0-9]*\) rejected.*/\1/p')
    read -r _ maxrss usr sys <"$dir/import.time"
    du_data=$(du -sb "$dir/data" | cut -f1); du_index=$(du -sb "$dir/data/index" | cut -f1)
    log "plenary import: $line in ${w}s = $(awk -v n="$read_n" -v w="$w" 'BEGIN{printf "%.0f", n/w}') read/s, $(awk -v n="$imported" -v w="$w" 'BEGIN{printf "%.0f", n/w}') stored/s; max RSS ${maxrss} KB"
    record import "{\"system\":\"plenary\",\"run\":$run,\"files\":${#files[@]},\"messages_read\":$read_n,\"stored\":$imported,\"duplicates\":$dups,\"rejected\":$rejected,\"wall_s\":$w,\"read_per_s\":$(awk -v n="$read_n" -v w="$w" 'BEGIN{printf "%.1f", n/w}'),\"stored_per_s\":$(awk -v n="$imported" -v w="$w" 'BEGIN{printf "%.1f", n/w}'),\"max_rss_kb\":$maxrss,\"user_s\":$usr,\"sys_s\":$sys,\"disk_bytes\":$du_data,\"index_bytes\":$du_index,\"summary\":\"$line\"}"
  done

  [ "$PUBLIC_INBOX" = 1 ] || { log "public-inbox skipped (PUBLIC_INBOX=0)"; topup; return 0; }
  # --- public-inbox on the same messages (as bench-anchors/bench_publicinbox.sh does) ---
  local mb="$WORK/twisted-all.mboxrd"
  cmdlog "python3 bench/corpus.py mboxrd --out $mb $CORPUS_DIR/*/*.txt.gz   # same split as plenary import"
  python3 "$BENCH/corpus.py" mboxrd --out "$mb" "${files[@]}" >"$WORK/twisted-all.json"
  local pstats; pstats=$(cat "$WORK/twisted-all.json")
  local PI="$WORK/pi"
  rm -rf "$PI"; mkdir -p "$PI"
  cat >"$PI/import.pl" <<'EOF'
use strict; use v5.12;
use PublicInbox::Config; use PublicInbox::InboxWritable;
my ($name, $mbox) = @ARGV;
my $ibx = PublicInbox::Config->new->lookup_name($name) or die "no inbox $name\n";
$ibx = PublicInbox::InboxWritable->new($ibx);
open my $fh, '<', $mbox or die "open $mbox: $!";
binmode $fh;
$ibx->import_mbox($fh, 'mboxrd');
EOF
  (
    export PI_CONFIG=$PI/config PI_DIR=$PI HOME=$PI
    public-inbox-init -V2 -L full twisted "$PI/twisted" "http://127.0.0.1:18099/twisted" "$ILIST" >>"$LOGS/publicinbox.log" 2>&1
  )
  cmdlog "PI_CONFIG=$PI/config HOME=$PI public-inbox-init -V2 -L full twisted $PI/twisted http://127.0.0.1:18099/twisted $ILIST"
  cmdlog "PI_CONFIG=$PI/config HOME=$PI /usr/bin/time -f '%e %M %U %S' perl $PI/import.pl twisted $mb   # InboxWritable->import_mbox(fh,'mboxrd'): git + msgmap + over + Xapian"
  log "public-inbox import_mbox of the same messages (this takes a few minutes)"
  t0=$(now)
  (
    export PI_CONFIG=$PI/config PI_DIR=$PI HOME=$PI
    timeout 1200 /usr/bin/time -f "%e %M %U %S" -o "$PI/import.time" perl "$PI/import.pl" twisted "$mb" >"$WORK/publicinbox-import.log" 2>&1
  ) || log "public-inbox import exited non-zero (see $WORK/publicinbox-import.log)"
  # public-inbox warns once per munged pipermail address ("user at host"): keep a digest only
  {
    echo "--- import_mbox output: $(wc -l <"$WORK/publicinbox-import.log") lines (full log: $WORK/publicinbox-import.log); most frequent line starts:"
    cut -c1-50 "$WORK/publicinbox-import.log" | sort | uniq -c | sort -rn | head -15 || true
  } >>"$LOGS/publicinbox.log"
  t1=$(now); w=$(elapsed "$t0" "$t1")
  local counts mm ov xd pmax pusr psys du_pi
  counts=$(python3 - "$PI/twisted" <<'EOF'
import sqlite3, sys, glob, subprocess, re
d = sys.argv[1]
mm = sqlite3.connect(d + '/msgmap.sqlite3').execute('select count(*) from msgmap').fetchone()[0]
ov = sqlite3.connect(glob.glob(d + '/xap*/over.sqlite3')[0]).execute('select count(*) from over').fetchone()[0]
xd = 0
for sh in glob.glob(d + '/xap*/[0-9]*'):
    out = subprocess.run(['xapian-delve', sh], capture_output=True, text=True).stdout
    m = re.search(r'number of documents = (\d+)', out)
    xd += int(m.group(1)) if m else 0
print(mm, ov, xd)
EOF
)
  read -r mm ov xd <<<"$counts"
  read -r _ pmax pusr psys <"$PI/import.time" || true
  du_pi=$(du -sb "$PI/twisted" | cut -f1)
  local pread; pread=$(jget "$pstats" messages)
  log "public-inbox import: $pread read, $mm stored (over $ov, xapian $xd) in ${w}s = $(awk -v n="$pread" -v w="$w" 'BEGIN{printf "%.0f", n/w}') read/s; max RSS ${pmax} KB"
  record import "{\"system\":\"public-inbox\",\"messages_read\":$pread,\"stored\":$mm,\"over_rows\":$ov,\"xapian_docs\":$xd,\"wall_s\":$w,\"read_per_s\":$(awk -v n="$pread" -v w="$w" 'BEGIN{printf "%.1f", n/w}'),\"stored_per_s\":$(awk -v n="$mm" -v w="$w" 'BEGIN{printf "%.1f", n/w}'),\"max_rss_kb\":${pmax:-0},\"user_s\":${pusr:-0},\"sys_s\":${psys:-0},\"disk_bytes\":$du_pi,\"version\":\"$(dpkg-query -W -f='${Version}' public-inbox 2>/dev/null)\",\"mbox_stats\":$pstats}"
  rm -rf "$PI"
  topup
}

# Grow the Plenary archive to ~90k messages for the web and memory parts: the anchors'
# deterministic synthetic corpus (gen_corpus.py, median 4 KB) goes into a second list.
topup() {
  local dir="$WORK/import"
  if [ "$TOPUP" -le 0 ]; then return 0; fi
  if [ ! -f "$ANCHORS/gen_corpus.py" ]; then log "no $ANCHORS/gen_corpus.py: no top-up"; return 0; fi
  local mb="$WORK/synth-n$TOPUP-s42.mbox"
  if [ ! -s "$mb" ]; then
    log "generating $TOPUP synthetic messages (gen_corpus.py --seed 42)"
    cmdlog "python3 $ANCHORS/gen_corpus.py --n $TOPUP --seed 42 --list-addr $SLIST --out $mb"
    python3 "$ANCHORS/gen_corpus.py" --n "$TOPUP" --seed 42 --list-addr "$SLIST" --out "$mb" 2>/dev/null
  fi
  cmdlog "$PLENARY --config $dir/plenary.toml list create $SLIST"
  "$PLENARY" --config "$dir/plenary.toml" list create "$SLIST" >/dev/null
  cmdlog "$PLENARY --config $dir/plenary.toml import --list $SLIST $mb"
  local t0 t1 w line
  t0=$(now)
  timeout 600 /usr/bin/time -f "%e %M %U %S" -o "$dir/topup.time" "$PLENARY" --config "$dir/plenary.toml" \
    import --list "$SLIST" "$mb" >"$dir/topup.out" 2>>"$LOGS/plenary-import.stderr"
  t1=$(now); w=$(elapsed "$t0" "$t1")
  line=$(grep -m1 'messages read' "$dir/topup.out")
  local n; n=$(echo "$line" | sed -n 's/.*: \([0-9]*\) imported.*/\1/p')
  local maxrss; read -r _ maxrss _ _ <"$dir/topup.time"
  log "top-up import: $line in ${w}s = $(awk -v n="$n" -v w="$w" 'BEGIN{printf "%.0f", n/w}') msgs/s"
  record import "{\"system\":\"plenary-topup\",\"corpus\":\"gen_corpus.py --n $TOPUP --seed 42\",\"mbox_bytes\":$(stat -c %s "$mb"),\"stored\":$n,\"wall_s\":$w,\"stored_per_s\":$(awk -v n="$n" -v w="$w" 'BEGIN{printf "%.1f", n/w}'),\"max_rss_kb\":$maxrss,\"summary\":\"$line\"}"
}

wrk_run() {  # name url conns
  local name=$1 url=$2 conns=$3 thr=2 out rps p50 p90 p99 non2xx bytes
  [ "$conns" -lt 2 ] && thr=1
  cmdlog "wrk -t$thr -c$conns -d${WRK_SECS}s --latency '$url'"
  out=$(timeout $((WRK_SECS + 30)) wrk -t"$thr" -c"$conns" -d"${WRK_SECS}s" --latency "$url" 2>&1)
  { echo "--- $name c=$conns $url"; echo "$out"; } >>"$LOGS/wrk.log"
  rps=$(echo "$out" | awk '/^Requests\/sec/ {print $2}')
  p50=$(echo "$out" | awk '$1=="50%" {print $2}')
  p90=$(echo "$out" | awk '$1=="90%" {print $2}')
  p99=$(echo "$out" | awk '$1=="99%" {print $2}')
  non2xx=$(echo "$out" | awk '/Non-2xx/ {print $NF}'); non2xx=${non2xx:-0}
  bytes=$(curl -s -o /dev/null -w '%{size_download}' "$url")
  log "wrk $name c=$conns: $rps req/s p50=$p50 p99=$p99 non2xx=$non2xx page=${bytes}B"
  record web "{\"page\":\"$name\",\"connections\":$conns,\"wrk_threads\":$thr,\"duration_s\":$WRK_SECS,\"req_per_s\":${rps:-0},\"p50\":\"$p50\",\"p90\":\"$p90\",\"p99\":\"$p99\",\"non_2xx\":$non2xx,\"page_bytes\":$bytes,\"url\":\"$url\"}"
}

part_web() {
  local dir="$WORK/import"
  [ -d "$dir/data" ] || { log "web needs the import's data: run with ONLY=\"import web\""; return 1; }
  : >"$RES/web.jsonl"; : >"$RES/memory.jsonl"
  [ -s "$WORK/twisted-all.json" ] || python3 "$BENCH/corpus.py" mboxrd --out "$WORK/twisted-all.mboxrd" "$CORPUS_DIR"/*/*.txt.gz >"$WORK/twisted-all.json"
  local pstats; pstats=$(cat "$WORK/twisted-all.json")
  local t0 t1
  cmdlog "$PLENARY --config $dir/plenary.toml serve"
  t0=$(now); start_daemon "$dir"; t1=$(now)
  log "daemon ready in $(elapsed "$t0" "$t1")s on the imported archive"
  local rebuilt=false
  grep -q 'building the search index' "$dir/stderr" && rebuilt=true
  local B="http://127.0.0.1:$WEB_PORT" pm tr
  pm=$(python3 -c 'import urllib.parse,sys;print(urllib.parse.quote(sys.argv[1],safe=""))' "$(jget "$pstats" permalink_mid)")
  tr=$(python3 -c 'import urllib.parse,sys;print(urllib.parse.quote(sys.argv[1],safe=""))' "$(jget "$pstats" thread_root_mid)")
  local lists common rare all
  lists=$(curl -s "$B/api/v1/lists")
  common=$(search_total twisted "$ILIST"); rare=$(search_total kqueue "$ILIST"); all=$(search_total the)
  log "lists: $lists; hits: twisted=$common kqueue=$rare the(site-wide)=$all; index rebuilt at start: $rebuilt"
  record memory "{\"kind\":\"archive\",\"lists\":$lists,\"hits_twisted\":$common,\"hits_kqueue\":$rare,\"hits_the_sitewide\":$all,\"index_rebuilt_at_start\":$rebuilt,\"startup_s\":$(elapsed "$t0" "$t1")}"
  local names=(permalink thread search_common search_rare search_sitewide_the)
  local urls=("$B/lists/$ILIST/m/$pm/" "$B/lists/$ILIST/t/$tr/" "$B/search?q=twisted&list=$ILIST" "$B/search?q=kqueue&list=$ILIST" "$B/search?q=the")
  # a few requests, then idle
  local u
  for u in "${urls[@]}" "$B/" "$B/lists/$ILIST/"; do curl -s -o /dev/null "$u"; done
  sleep "$IDLE_SECS"
  local m; m=$(python3 "$BENCH/procstat.py" mem "$DPID")
  log "idle after a few requests: $m"
  record memory "{\"kind\":\"idle_after_few_requests\",\"idle_s\":$IDLE_SECS,\"mem\":$m}"
  cmdlog "python3 bench/procstat.py mem <plenary pid>   # VmHWM from /proc/PID/status, Rss/Pss from /proc/PID/smaps_rollup; after ${IDLE_SECS}s idle"
  local i c
  for c in $WRK_CONNS; do
    for i in "${!names[@]}"; do wrk_run "${names[$i]}" "${urls[$i]}" "$c"; done
  done
  sleep "$IDLE_SECS"
  m=$(python3 "$BENCH/procstat.py" mem "$DPID")
  log "idle after the wrk load: $m"
  record memory "{\"kind\":\"idle_after_wrk\",\"idle_s\":$IDLE_SECS,\"mem\":$m}"
  stop_daemon
  # The same once more after a restart: the first daemon run after a bulk import holds a few
  # MB more than any later one (sled's state after the import; see README), so report both.
  cmdlog "$PLENARY --config $dir/plenary.toml serve   # restarted: few requests, wrk at c=10 only"
  start_daemon "$dir"
  for u in "${urls[@]}" "$B/" "$B/lists/$ILIST/"; do curl -s -o /dev/null "$u"; done
  for i in "${!names[@]}"; do wrk_run "${names[$i]}-restarted" "${urls[$i]}" 10; done
  sleep "$IDLE_SECS"
  m=$(python3 "$BENCH/procstat.py" mem "$DPID")
  log "idle after the wrk load, second start: $m"
  record memory "{\"kind\":\"idle_after_wrk_second_start\",\"idle_s\":$IDLE_SECS,\"mem\":$m}"
  stop_daemon
}

# ---- main --------------------------------------------------------------------------------
check_tools
: >"$RES/commands.txt"
: >"$LOGS/run.log"; : >"$LOGS/ingest.log"; : >"$LOGS/wrk.log"; : >"$LOGS/publicinbox.log"
{
  echo "date: $(date -u)"
  echo "host: $(uname -srm)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//') x $(nproc)"
  echo "mem: $(free -g | awk '/Mem:/ {print $2 " GiB"}')"
  echo "os: $(. /etc/os-release; echo "$PRETTY_NAME")"
  echo "fs of WORK: $(df -T "$WORK" | awk 'NR==2 {print $1, $2}')"
  echo "rustc: $(rustc --version 2>/dev/null)"
  for p in postfix public-inbox wrk libxapian30; do echo "$p: $(dpkg-query -W -f='${Version}' "$p" 2>/dev/null || echo n/a)"; done
  echo "git: $(git --version)"
  echo "knobs: N=$N CONCURRENCY='$CONCURRENCY' SINK_COUNT=$SINK_COUNT WRK_SECS=$WRK_SECS WRK_CONNS='$WRK_CONNS' IDLE_SECS=$IDLE_SECS ONLY='$ONLY'"
} >"$RES/env.txt"
T_START=$(date +%s)
build
# Other work on the 2 cores skews every figure: say so in the results.
read -r la1 _ </proc/loadavg
echo "load average at start (after build): $la1" >>"$RES/env.txt"
awk -v l="$la1" 'BEGIN{exit !(l > 0.5)}' && log "WARNING: load average $la1 before the run: other work on this machine will skew the figures"
for part in $ONLY; do
  log "######## $part"
  "part_$part"
done
log "all parts done in $(( $(date +%s) - T_START ))s"
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$RES/env.txt"
python3 "$BENCH/summarize.py" "$RES" >"$RES/summary.md"
cat "$RES/summary.md"
