#!/usr/bin/env bash
# Plenary's archive web pages against public-inbox-httpd serving THE SAME archive, same run.
# See bench/web/README.md.
#
#   bench/web/run.sh                             ~8.5 minutes on 2 vCPUs (~5 with PROFILE=0; corpus cached in $WORK)
#   WRK_SECS=5 PROFILE=0 bench/web/run.sh        quicker
#
# Builds nothing and installs nothing: it uses $PLENARY_BIN (default /tmp/plenary-bench-bin,
# a copy of target/release/plenary taken before the run) and the Debian packages public-inbox,
# xapian-tools, wrk and curl. Everything listens on 127.0.0.1; every process it starts is
# stopped by PID on exit; every step is bounded by `timeout`.
# Writes bench/web/results.md, results.jsonl and logs/ (full wrk output, server logs, profiles).
set -euo pipefail

WEB=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$WEB/../.." && pwd)
export LC_ALL=C.UTF-8

# ---- knobs -------------------------------------------------------------------------------
WORK=${WORK:-/tmp/plenary-web-bench}
PLENARY_BIN=${PLENARY_BIN:-/tmp/plenary-bench-bin}
ANCHORS=${ANCHORS:-/work/shared/bench-anchors}
N=${N:-20000}
SEED=${SEED:-42}
WRK_SECS=${WRK_SECS:-10}
CONNS_LO=${CONNS_LO:-1}               # wrk -t1 -c1: unloaded latency
CONNS_HI=${CONNS_HI:-64}              # wrk -t2 -c64: loaded throughput (ratios use this)
PI_WORKERS=${PI_WORKERS:-2}           # public-inbox-httpd -W
SEARCH_WORD=${SEARCH_WORD:-mutex}     # a common word of gen_corpus.py's vocabulary
PI_PORT=${PI_PORT:-18180}
WEB_PORT=${WEB_PORT:-18181}
SMTP_PORT=${SMTP_PORT:-25281}
PROFILE=${PROFILE:-1}                 # 1: after the measurements, perf-profile Plenary per page
PROFILE_SECS=${PROFILE_SECS:-5}
LIST=bench@lists.example.org
BIGLIST=big@lists.example.org          # only used when the corpus has no thread of >= 50 messages

RES_MD=$WEB/results.md
RES_JSON=$WEB/results.jsonl
LOGS=$WEB/logs
CORPUS=$WORK/corpus-n$N-s$SEED.mbox
PI=$WORK/pi
PL=$WORK/plenary
PLENARY=$WORK/plenary-under-test
CMDS=$LOGS/commands.txt
META=$WORK/meta.json
mkdir -p "$WORK" "$LOGS"

# ---- helpers -----------------------------------------------------------------------------
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  sleep 1
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -0 "$p" 2>/dev/null && kill -9 "$p" 2>/dev/null || true; done
  return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" | tee -a "$LOGS/run.log" >&2; }
die() { log "ERROR: $*"; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.1f", b-a}'; }
record() { printf '%s\n' "$*" >>"$RES_JSON"; }
cmdlog() { printf '%s\n' "$*" >>"$CMDS"; }
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {  # PORT SECONDS
  local i=0
  while port_free "$1"; do
    i=$((i + 1)); [ $i -gt $(($2 * 10)) ] && return 1
    sleep 0.1
  done
}
py() { timeout 300 python3 "$WEB/webbench.py" "$@"; }
jq1() { python3 -c 'import json,sys; d=json.loads(sys.argv[1])
for k in sys.argv[2].split("."): d=d[int(k)] if isinstance(d,list) else d[k]
print(d)' "$1" "$2"; }
urlenc() { python3 -c 'import urllib.parse,sys;print(urllib.parse.quote(sys.argv[1],safe="@"))' "$1"; }
# VmRSS (KiB) summed over PID and all its descendants
rss_tree() {
  local pids p s=0 v
  pids=$(ps -eo pid=,ppid= | awk -v r="$1" '{par[$1]=$2} END {for (p in par) {q=p; while (q != "" && q != 0) {if (q == r) {print p; break} q=par[q]}}}')
  for p in $pids; do
    v=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || true); s=$((s + ${v:-0}))
  done
  echo "$s $(echo $pids | wc -w)"
}

# ---- checks ------------------------------------------------------------------------------
for t in wrk curl public-inbox-init public-inbox-httpd public-inbox-compact xapian-delve perl python3 gzip; do
  command -v "$t" >/dev/null || die "missing $t (apt-get install -y public-inbox xapian-tools wrk curl)"
done
[ -x "$PLENARY_BIN" ] || die "no Plenary binary at $PLENARY_BIN (cp target/release/plenary there first)"
for p in $PI_PORT $WEB_PORT $SMTP_PORT; do port_free "$p" || die "port 127.0.0.1:$p is in use"; done
[ "$PROFILE" = 1 ] && ! command -v perf >/dev/null && PROFILE=0

T_START=$(date +%s)
: >"$RES_JSON"; : >"$CMDS"; : >"$LOGS/run.log"
rm -f "$LOGS"/wrk-*.txt "$LOGS"/perf-* "$LOGS"/page-*.html
cp "$PLENARY_BIN" "$PLENARY.tmp" && mv "$PLENARY.tmp" "$PLENARY"
read -r LOAD_START _ </proc/loadavg
log "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
NOTES=()

# ---- corpus ------------------------------------------------------------------------------
if [ ! -s "$CORPUS" ]; then
  log "generating corpus n=$N seed=$SEED"
  timeout 300 python3 "$ANCHORS/gen_corpus.py" --n "$N" --seed "$SEED" --list-addr "$LIST" --out "$CORPUS" 2>"$CORPUS.stats"
fi
cmdlog "python3 $ANCHORS/gen_corpus.py --n $N --seed $SEED --list-addr $LIST --out $CORPUS"
log "corpus: $(cat "$CORPUS.stats" 2>/dev/null)"
PICK=$(py pick "$CORPUS")
echo "$PICK" >"$LOGS/pick.json"
PERMA=$(jq1 "$PICK" permalink_mid)
NMSG=$(jq1 "$PICK" messages)
NCAND15=$(python3 -c 'import json,sys;print(len(json.loads(sys.argv[1])["thread15_candidates"]))' "$PICK")
NCAND50=$(python3 -c 'import json,sys;print(len(json.loads(sys.argv[1])["thread50_candidates"]))' "$PICK")
log "corpus analysis: $NMSG messages, threads by size $(jq1 "$PICK" thread_size_hist), median-size message $PERMA ($(jq1 "$PICK" permalink_bytes) B)"

# A thread of >= 50 messages: from the corpus if it has one, else built into a second list
BIGMBOX=
if [ "$NCAND50" -eq 0 ]; then
  BIGROOT="bigthread-root.0@example.org"
  BIGMBOX=$WORK/bigthread.mbox
  py bigthread --root-mid "$BIGROOT" --subject "A thread of fifty messages" --list-addr "$BIGLIST" --n 50 --out "$BIGMBOX"
  cmdlog "python3 bench/web/webbench.py bigthread --root-mid $BIGROOT --subject 'A thread of fifty messages' --list-addr $BIGLIST --n 50 --out $BIGMBOX"
  NOTES+=("The corpus has no thread of >= 50 messages with a subject of its own, so a 50-message thread (a root and 49 replies) was imported into a second list/inbox, $BIGLIST.")
fi

# ---- public-inbox: v2 inbox, indexlevel full, import_mbox (as bench-anchors/bench_publicinbox.sh)
rm -rf "$PI"; mkdir -p "$PI"
export PI_CONFIG=$PI/config PI_DIR=$PI
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
cp "$PI/import.pl" "$LOGS/pi-import.pl"
pi_inbox() {  # name address mbox
  HOME=$PI timeout 60 public-inbox-init -V2 -L full "$1" "$PI/$1" "http://127.0.0.1:$PI_PORT/$1" "$2" >>"$LOGS/publicinbox.log" 2>&1
  cmdlog "PI_CONFIG=$PI/config HOME=$PI public-inbox-init -V2 -L full $1 $PI/$1 http://127.0.0.1:$PI_PORT/$1 $2"
  cmdlog "PI_CONFIG=$PI/config HOME=$PI perl $PI/import.pl $1 $3   # logs/pi-import.pl: InboxWritable->import_mbox(\$fh,'mboxrd')"
  HOME=$PI timeout 900 perl "$PI/import.pl" "$1" "$3" >>"$LOGS/publicinbox.log" 2>&1 || die "public-inbox import of $3 failed"
  cmdlog "PI_CONFIG=$PI/config HOME=$PI public-inbox-compact $PI/$1"
  HOME=$PI timeout 300 public-inbox-compact "$PI/$1" >>"$LOGS/publicinbox.log" 2>&1 || log "public-inbox-compact $1 rc=$?"
}
log "public-inbox: init -V2 -L full + import_mbox ($NMSG msgs)"
t0=$(now)
pi_inbox bench "$LIST" "$CORPUS"
t1=$(now); w=$(elapsed "$t0" "$t1")
pi_n=$(python3 -c 'import sqlite3,sys;print(sqlite3.connect(sys.argv[1]).execute("select count(*) from msgmap").fetchone()[0])' "$PI/bench/msgmap.sqlite3")
log "public-inbox: $pi_n messages imported + compacted in ${w}s"
record "{\"kind\":\"import\",\"server\":\"public-inbox\",\"messages\":$pi_n,\"wall_s\":$w,\"msgs_per_s\":$(awk -v n="$pi_n" -v w="$w" 'BEGIN{printf "%.1f", n/w}'),\"note\":\"import_mbox (git+msgmap+over+Xapian) + public-inbox-compact\"}"
[ "$pi_n" = "$NMSG" ] || die "public-inbox holds $pi_n messages, expected $NMSG"
[ -n "$BIGMBOX" ] && pi_inbox big "$BIGLIST" "$BIGMBOX"

# ---- Plenary: list create + import while the daemon is stopped ---------------------------
rm -rf "$PL"; mkdir -p "$PL"
cat >"$PL/plenary.toml" <<EOF
[data]
dir = "$PL/data"
[smtp]
listen = "127.0.0.1:$SMTP_PORT"
[web]
listen = "127.0.0.1:$WEB_PORT"
base_url = "http://127.0.0.1:$WEB_PORT"
[log]
level = "info"
EOF
cp "$PL/plenary.toml" "$LOGS/plenary.toml"
PLC=(timeout 900 "$PLENARY" --config "$PL/plenary.toml")
cmdlog "$PLENARY --config $PL/plenary.toml list create $LIST   # config: logs/plenary.toml"
"${PLC[@]}" list create "$LIST" >>"$LOGS/plenary-import.log" 2>&1 || die "plenary list create failed"
cmdlog "$PLENARY --config $PL/plenary.toml import --list $LIST $CORPUS"
log "plenary: import ($NMSG msgs)"
t0=$(now)
"${PLC[@]}" import --list "$LIST" "$CORPUS" >>"$LOGS/plenary-import.log" 2>&1 || die "plenary import failed: $(tail -3 "$LOGS/plenary-import.log")"
t1=$(now); w=$(elapsed "$t0" "$t1")
line=$(grep 'messages read' "$LOGS/plenary-import.log" | tail -1)
log "plenary: $line in ${w}s"
pl_n=$(echo "$line" | sed -n 's/.*: \([0-9]*\) imported.*/\1/p')
record "{\"kind\":\"import\",\"server\":\"plenary\",\"messages\":${pl_n:-0},\"wall_s\":$w,\"msgs_per_s\":$(awk -v n="${pl_n:-0}" -v w="$w" 'BEGIN{printf "%.1f", n/w}'),\"note\":\"plenary import (store + search index), daemon stopped\"}"
if [ -n "$BIGMBOX" ]; then
  cmdlog "$PLENARY --config $PL/plenary.toml list create $BIGLIST"
  cmdlog "$PLENARY --config $PL/plenary.toml import --list $BIGLIST $BIGMBOX"
  "${PLC[@]}" list create "$BIGLIST" >>"$LOGS/plenary-import.log" 2>&1
  "${PLC[@]}" import --list "$BIGLIST" "$BIGMBOX" >>"$LOGS/plenary-import.log" 2>&1
fi

# ---- start both servers ------------------------------------------------------------------
cmdlog "$PLENARY --config $PL/plenary.toml serve"
"$PLENARY" --config "$PL/plenary.toml" serve >"$LOGS/plenary.stdout" 2>"$LOGS/plenary.stderr" </dev/null &
PLPID=$!; PIDS+=("$PLPID")
i=0
while ! grep -q '^plenary: listening' "$LOGS/plenary.stdout" 2>/dev/null; do
  kill -0 "$PLPID" 2>/dev/null || die "plenary exited: $(tail -5 "$LOGS/plenary.stderr")"
  i=$((i + 1)); [ $i -gt 1200 ] && die "plenary not listening after 120 s"
  sleep 0.1
done
log "plenary serve pid $PLPID listening"
PB="http://127.0.0.1:$WEB_PORT"
api_total() {
  curl -s --max-time 10 "$PB/api/v1/search?q=$SEARCH_WORD&list=$LIST" | python3 -c 'import json,sys
try: print(json.load(sys.stdin).get("total", -1))
except Exception: print(-1)'
}
list_count() {
  curl -s --max-time 10 "$PB/api/v1/lists" | python3 -c 'import json,sys
try: print(sum(l["messages"] or 0 for l in json.load(sys.stdin)["lists"] if l["address"]==sys.argv[1]))
except Exception: print(-1)' "$LIST"
}
# the import indexed inline; still wait until the search total is stable and the list is complete
cmdlog "curl -s '$PB/api/v1/search?q=$SEARCH_WORD&list=$LIST'   # polled each second until total is stable 3 times and /api/v1/lists shows $NMSG"
deadline=$(( $(date +%s) + 300 )); prev=-2; same=0
while :; do
  tot=$(api_total); cnt=$(list_count)
  if [ "$tot" = "$prev" ] && [ "$tot" -gt 0 ] && [ "$cnt" = "$NMSG" ]; then same=$((same + 1)); else same=0; fi
  [ $same -ge 3 ] && break
  [ "$(date +%s)" -gt "$deadline" ] && die "plenary index not settled after 300 s (total=$tot, list count=$cnt)"
  prev=$tot; sleep 1
done
log "plenary: list shows $cnt messages; '$SEARCH_WORD' has $tot hits (stable)"

cmdlog "PI_CONFIG=$PI/config HOME=$PI public-inbox-httpd -W $PI_WORKERS -l http://127.0.0.1:$PI_PORT"
HOME=$PI public-inbox-httpd -W "$PI_WORKERS" -l "http://127.0.0.1:$PI_PORT" </dev/null >"$LOGS/public-inbox-httpd.log" 2>&1 &
PIPID=$!; PIDS+=("$PIPID")
wait_port "$PI_PORT" 60 || die "public-inbox-httpd not listening after 60 s"
log "public-inbox-httpd -W $PI_WORKERS pid $PIPID listening"
IB="http://127.0.0.1:$PI_PORT"

# ---- pages, checked -----------------------------------------------------------------------
declare -A PIURL PLURL NOTE
fetch() {  # URL FILE -> prints http code
  timeout 120 curl -s -o "$2" -w '%{http_code}' --max-time 100 "$1"
}
for srv in pi pl; do  # warm-up: one request per server
  if [ $srv = pi ]; then fetch "$IB/bench/" /dev/null >/dev/null; else fetch "$PB/lists/$LIST/" /dev/null >/dev/null; fi
done
# thread of ~15: first candidate for which both servers show the same number of messages
choose_thread() {  # KEY(thread|thread50) CANDIDATE-LIST-NAME
  local key=$1 cands=$2 n i root size e1 e2 c1 c2
  n=$(python3 -c 'import json,sys;print(len(json.loads(sys.argv[1])[sys.argv[2]]))' "$PICK" "$cands")
  for ((i = 0; i < n; i++)); do
    root=$(jq1 "$PICK" "$cands.$i.root"); size=$(jq1 "$PICK" "$cands.$i.size")
    e=$(urlenc "$root")
    c1=$(fetch "$IB/bench/$e/T/" "$WORK/probe-pi.html"); c2=$(fetch "$PB/lists/$LIST/t/$e/" "$WORK/probe-pl.html")
    local k1 k2; k1=$(py count-thread public-inbox "$WORK/probe-pi.html"); k2=$(py count-thread plenary "$WORK/probe-pl.html")
    log "$key candidate $root (corpus: $size msgs): public-inbox $c1 $k1 msgs, plenary $c2 $k2 msgs"
    if [ "$c1" = 200 ] && [ "$c2" = 200 ] && [ "$k1" = "$size" ] && { [ "$k2" = "$size" ] || { [ "$key" = thread50 ] && [ "$k2" = 50 ]; }; }; then
      PIURL[$key]="$IB/bench/$e/T/"; PLURL[$key]="$PB/lists/$LIST/t/$e/"
      NOTE[$key]="root $root; $size messages in the corpus; public-inbox /T/ shows $k1, Plenary's first page shows $k2"
      eval "${key}_ROOT=\$root; ${key}_SIZE=\$size; ${key}_PL=\$k2"
      return 0
    fi
  done
  return 1
}
choose_thread thread thread15_candidates || die "no ~15-message thread that both servers show identically"
if [ -z "$BIGMBOX" ]; then
  choose_thread thread50 thread50_candidates || die "no >=50-message thread that both servers show identically"
else
  e=$(urlenc "$BIGROOT")
  PIURL[thread50]="$IB/big/$e/T/"; PLURL[thread50]="$PB/lists/$BIGLIST/t/$e/"
  NOTE[thread50]="built thread (root + 49 replies) in a second list/inbox"
  thread50_ROOT=$BIGROOT; thread50_SIZE=50
fi
# shellcheck disable=SC2154
[ "${thread50_PL:-50}" -lt "$thread50_SIZE" ] && NOTES+=("thread50: the corpus has no thread of exactly 50 messages; the smallest one with >= 50 has $thread50_SIZE. Plenary pages threads at 50 messages (THREAD_PAGE), so its page holds messages 1-50 (and a pager), while public-inbox's /T/ holds all $thread50_SIZE.")

PAGES=(list thread search search_l20 permalink thread50)
PIURL[list]="$IB/bench/";                        PLURL[list]="$PB/lists/$LIST/"
PIURL[search]="$IB/bench/?q=$SEARCH_WORD";        PLURL[search]="$PB/search?q=$SEARCH_WORD&list=$LIST"
PIURL[search_l20]="$IB/bench/?q=$SEARCH_WORD&l=20"; PLURL[search_l20]="$PB/search?q=$SEARCH_WORD&list=$LIST"
e=$(urlenc "$PERMA")
PIURL[permalink]="$IB/bench/$e/";                PLURL[permalink]="$PB/lists/$LIST/m/$e/"
NOTE[permalink]="median-size message of the corpus ($PERMA, $(jq1 "$PICK" permalink_bytes) bytes)"

# fetch every page once: status 200, sizes, content checks
curl -s -o "$WORK/style.css" "$PB/static/style.css"
CSS_BYTES=$(stat -c %s "$WORK/style.css"); CSS_GZ=$(py gz "$WORK/style.css")
log "plenary /static/style.css: $CSS_BYTES B, gzip -6 $CSS_GZ B"
for page in "${PAGES[@]}"; do
  for srv in public-inbox plenary; do
    if [ $srv = public-inbox ]; then u=${PIURL[$page]}; else u=${PLURL[$page]}; fi
    f="$LOGS/page-$srv-$page.html"
    code=$(fetch "$u" "$f")
    [ "$code" = 200 ] || die "$srv $page: HTTP $code for $u"
    bytes=$(stat -c %s "$f"); gz=$(py gz "$f")
    extra=""
    if [ $srv = plenary ]; then extra=",\"gz6_with_css\":$((gz + CSS_GZ)),\"css_gz6\":$CSS_GZ"; fi
    case $page in
      thread|thread50) extra="$extra,\"messages_on_page\":$(py count-thread "$srv" "$f")" ;;
      search|search_l20) extra="$extra,\"search_total\":$(py search-total "$srv" "$f"),\"items_on_page\":$(py count-items "$srv" search "$f")" ;;
      list) extra="$extra,\"items_on_page\":$(py count-items "$srv" list "$f")" ;;
    esac
    # one timed request, for the record
    ttot=$(curl -s -o /dev/null -w '%{time_total}' "$u")
    record "{\"kind\":\"page\",\"server\":\"$srv\",\"page\":\"$page\",\"url\":\"$u\",\"status\":$code,\"bytes\":$bytes,\"gz6\":$gz,\"single_request_s\":$ttot$extra}"
    log "$srv $page: 200, $bytes B (gzip -6 $gz B) $extra"
  done
done
# gzip -6 via the gzip(1) tool too, for the exact figure the brief asks for (python's zlib level 6 is the same deflate)
for page in thread50; do
  g=$(gzip -6 -c "$LOGS/page-plenary-$page.html" | wc -c); log "gzip(1) -6 of Plenary $page HTML: $g B (+ CSS $(gzip -6 -c "$WORK/style.css" | wc -c) B)"
done
# search totals on both sides (the pages must find the word)
pit=$(py search-total public-inbox "$LOGS/page-public-inbox-search.html"); plt=$(py search-total plenary "$LOGS/page-plenary-search.html")
log "search '$SEARCH_WORD': public-inbox reports $pit hits, Plenary $plt"
NOTE[list]="newest topics, each server's default first page: public-inbox $(py count-items public-inbox list "$LOGS/page-public-inbox-list.html") topics (those among its 200 newest messages), Plenary $(py count-items plenary list "$LOGS/page-plenary-list.html") threads (PER_PAGE = 50) with months and subscribe form"
NOTE[search]="'$SEARCH_WORD', each server's default page: public-inbox 200 hits newest first (reports $pit matches), Plenary 20 hits by relevance (reports $plt)"
NOTE[search_l20]="same query, public-inbox limited to 20 hits (&l=20) so both pages list 20 hits"

# ---- load ----------------------------------------------------------------------------------
cmdlog "# for every page, public-inbox then Plenary:"
cmdlog "wrk -t1 -c$CONNS_LO -d${WRK_SECS}s --latency URL"
cmdlog "wrk -t2 -c$CONNS_HI -d${WRK_SECS}s --latency URL"
wrk_run() {  # server page url conns
  local srv=$1 page=$2 url=$3 c=$4 thr=2 f j
  [ "$c" -lt 2 ] && thr=1
  f="$LOGS/wrk-$srv-$page-c$c.txt"
  { echo "# wrk -t$thr -c$c -d${WRK_SECS}s --latency '$url'   ($(date -u +%T) UTC, load $(cut -d' ' -f1 /proc/loadavg))"; } >"$f"
  timeout $((WRK_SECS + 60)) wrk -t"$thr" -c"$c" -d"${WRK_SECS}s" --timeout 30s --latency "$url" >>"$f" 2>&1 || log "wrk rc=$? ($srv $page c=$c)"
  j=$(py wrk "$f")
  record "{\"kind\":\"http\",\"server\":\"$srv\",\"page\":\"$page\",\"connections\":$c,\"wrk_threads\":$thr,\"duration_s\":$WRK_SECS,\"url\":\"$url\",$(echo "$j" | sed 's/^{//')"
  log "wrk $srv $page c=$c: $(echo "$j" | python3 -c 'import json,sys;d=json.load(sys.stdin);print("%(req_per_s)s req/s p50=%(p50_ms)s ms p99=%(p99_ms)s ms non2xx=%(non_2xx)s errors=%(socket_errors)s" % d)')"
}
for page in "${PAGES[@]}"; do
  for c in $CONNS_LO $CONNS_HI; do
    wrk_run public-inbox "$page" "${PIURL[$page]}" "$c"
    wrk_run plenary "$page" "${PLURL[$page]}" "$c"
  done
done

# ---- memory after the load -----------------------------------------------------------------
read -r pir pin < <(rss_tree "$PIPID")
read -r plr pln < <(rss_tree "$PLPID")
record "{\"kind\":\"rss\",\"server\":\"public-inbox\",\"rss_kb\":$pir,\"processes\":$pin}"
record "{\"kind\":\"rss\",\"server\":\"plenary\",\"rss_kb\":$plr,\"processes\":$pln}"
log "VmRSS after load: public-inbox-httpd ($pin procs) $pir KiB, plenary ($pln procs) $plr KiB"
cmdlog "awk '/^VmRSS/' /proc/PID/status   # summed over the server PID and its descendants, after the load"

# ---- profile Plenary per page (after the measurements, so it does not skew them) ----------
declare -A PROF
if [ "$PROFILE" = 1 ]; then
  cmdlog "perf record -F 499 --call-graph dwarf,16384 -p <plenary pid> -- sleep $PROFILE_SECS   # while wrk -t2 -c$CONNS_HI runs, per page"
  cmdlog "perf report --children --stdio -g none --percent-limit 1   # -> logs/perf-plenary-PAGE.txt; summarised by webbench.py perf-summary"
  for page in "${PAGES[@]}"; do
    [ "$page" = search_l20 ] && continue
    timeout $((PROFILE_SECS + 30)) wrk -t2 -c"$CONNS_HI" -d"$((PROFILE_SECS + 2))s" "${PLURL[$page]}" >/dev/null 2>&1 &
    wp=$!; PIDS+=("$wp")
    sleep 1
    timeout $((PROFILE_SECS + 60)) perf record -F 499 --call-graph dwarf,16384 -o "$WORK/perf-$page.data" -p "$PLPID" -- sleep "$PROFILE_SECS" >/dev/null 2>&1 || true
    wait "$wp" 2>/dev/null || true
  done
fi

# ---- stop ----------------------------------------------------------------------------------
kill "$PIPID" 2>/dev/null || true; kill "$PLPID" 2>/dev/null || true
for _ in $(seq 1 100); do kill -0 "$PIPID" 2>/dev/null || kill -0 "$PLPID" 2>/dev/null || break; sleep 0.1; done
for p in "$PIPID" "$PLPID"; do kill -0 "$p" 2>/dev/null && { log "pid $p did not stop in 10 s; SIGKILL"; kill -9 "$p" 2>/dev/null || true; }; done
wait "$PIPID" "$PLPID" 2>/dev/null || true
alive=(); for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive+=("$p"); done; PIDS=("${alive[@]:-}")
if [ "$PROFILE" = 1 ]; then
  for page in "${PAGES[@]}"; do
    [ -s "$WORK/perf-$page.data" ] || continue
    timeout 300 perf report -i "$WORK/perf-$page.data" --children --stdio -g none --percent-limit 1 2>/dev/null \
      | cut -c1-400 >"$LOGS/perf-plenary-$page.txt" || true
    py perf-summary "$LOGS/perf-plenary-$page.txt" >"$LOGS/perf-plenary-$page.md" || true
    PROF[$page]="$LOGS/perf-plenary-$page.md"
    rm -f "$WORK/perf-$page.data"
  done
  log "profiles: logs/perf-plenary-*.txt (full --children reports) and *.md (summaries)"
fi
T_END=$(date +%s)
log "done in $((T_END - T_START)) s; load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"

# ---- report --------------------------------------------------------------------------------
# source files that differ from HEAD and were modified before the binary was built (so may be in it)
bin_t=$(stat -c %Y "$PLENARY_BIN"); bin_what="file time of $PLENARY_BIN"
if cmp -s "$ROOT/target/release/plenary" "$PLENARY_BIN" 2>/dev/null; then
  bin_t=$(stat -c %Y "$ROOT/target/release/plenary"); bin_what="built (target/release/plenary, identical)"
fi
dirty=0
while read -r f; do
  [ -e "$ROOT/$f" ] || continue
  [ "$(stat -c %Y "$ROOT/$f")" -le "$bin_t" ] && dirty=$((dirty + 1))
done < <(git -C "$ROOT" status --porcelain -- crates Cargo.toml Cargo.lock archive-templates 2>/dev/null | awk '{print $NF}')
META_COMMIT="$(git -C "$ROOT" rev-parse --short HEAD), committed $(git -C "$ROOT" log -1 --format=%cd --date=format:'%F %T' HEAD)"
if [ "$dirty" -gt 0 ]; then
  META_COMMIT="$META_COMMIT; $dirty source files differ from HEAD and were modified before the binary was built, so the binary may include uncommitted changes"
else
  META_COMMIT="$META_COMMIT; no source file that differs from HEAD predates the binary"
fi
NOTES+=("Thread pages: both servers show the same messages (checked by counting them in the HTML: ${NOTE[thread]}; thread50: ${NOTE[thread50]}). They are laid out differently: public-inbox's /T/ is every message in full followed by a thread overview; Plenary's is a contents list followed by every message in full.")
NOTES+=("Responses are not compressed by either server here (wrk sends no Accept-Encoding). The gz-6 columns are gzip -6 of the saved HTML (and of Plenary's /static/style.css, $CSS_BYTES bytes raw, $CSS_GZ gzip -6); public-inbox has its CSS inline in every page.")
{
  printf '{'
  printf '"date":"%s",' "$(date -u '+%F %T UTC')"
  printf '"commit":"%s",' "$META_COMMIT"
  printf '"plenary_binary":"%s",' "$PLENARY_BIN, sha256 $(sha256sum "$PLENARY" | cut -c1-16)…, $bin_what $(date -u -d "@$bin_t" '+%F %T') UTC"
  printf '"public_inbox":"%s",' "$(dpkg-query -W -f='${Version}' public-inbox), public-inbox-httpd -W $PI_WORKERS, v2 inbox -L full (Xapian), compacted"
  printf '"wrk":"%s",' "$(dpkg-query -W -f='${Version}' wrk)"
  printf '"xapian":"%s",' "libxapian30 $(dpkg-query -W -f='${Version}' libxapian30 2>/dev/null)"
  printf '"host":"%s",' "$(uname -srm), $(nproc) vCPU ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')), $(free -g | awk '/Mem:/ {print $2}') GiB"
  printf '"load_at_start":"%s",' "$LOAD_START (1-min load average when the script started)"
  printf '"load_at_end":"%s",' "$(cut -d' ' -f1-3 /proc/loadavg)"
  printf '"corpus":"%s",' "gen_corpus.py --n $N --seed $SEED: $(sed 's/^wrote [^:]*: //' "$CORPUS.stats" 2>/dev/null)"
  printf '"total_run_s":"%s",' "$((T_END - T_START))"
  printf '"wrk_secs":%s,' "$WRK_SECS"
  printf '"commands_file":"%s",' "$CMDS"
  printf '"page_order":["list","thread","search","search_l20","permalink","thread50"],'
  printf '"targets":{"list":5,"thread":5,"search":5,"search_l20":5,"permalink":2},'
  printf '"big_thread":{"messages":%s,"gz6":%s,"css_gz6":%s,"gz6_with_css":%s},' "${thread50_PL:-50}" \
    "$(py gz "$LOGS/page-plenary-thread50.html")" "$CSS_GZ" "$(( $(py gz "$LOGS/page-plenary-thread50.html") + CSS_GZ ))"
  printf '"urls":{'
  sep=""
  for page in "${PAGES[@]}"; do printf '%s"%s":{"public-inbox":"%s","plenary":"%s"}' "$sep" "$page" "${PIURL[$page]}" "${PLURL[$page]}"; sep=","; done
  printf '},"page_notes":'
  for page in "${PAGES[@]}"; do printf '%s\n' "$page"; printf '%s\n' "${NOTE[$page]:-}"; done | python3 -c 'import json,sys
l=sys.stdin.read().split("\n"); print(json.dumps({l[i]:l[i+1] for i in range(0,len(l)-1,2)}), end="")'
  printf ',"profile_how":"%s"' "perf record -F 499 --call-graph dwarf for ${PROFILE_SECS} s of wrk -t2 -c$CONNS_HI after the measurements; inclusive and self share of Plenary's samples, framework frames (hyper, tokio, axum, tower, futures) left out; full reports in logs/perf-plenary-PAGE.txt"
  printf ',"profiles":{'
  sep=""; for page in "${!PROF[@]}"; do printf '%s"%s":"%s"' "$sep" "$page" "${PROF[$page]}"; sep=","; done
  printf '}'
  printf ',"notes":'
  printf '%s\n' "${NOTES[@]}" | python3 -c 'import json,sys; print(json.dumps([l for l in sys.stdin.read().split("\n") if l]), end="")'
  printf '}\n'
} >"$META"
cp "$META" "$LOGS/meta.json"
py report "$RES_JSON" "$META" >"$RES_MD"
log "wrote $RES_MD"
cat "$RES_MD"
