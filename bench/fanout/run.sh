#!/usr/bin/env bash
# The fan-out benchmark of record, in one run: the machine's signing ceiling, Plenary and GNU
# Mailman 3 delivering the same post to lists of each size into Postfix's smtp-sink, and the
# ceiling again at the end.
#
#   bench/fanout/run.sh [SIZES...]        default: 1000 10000 100000
#
# For each size, in this order:
#   - plenary.sh with SINK=count, REPS times (5): the figure of record is the median. The sink
#     only counts copies, so the measuring harness takes ~27 µs of the shared cores per copy.
#   - plenary.sh with SINK=dump, once: every copy is written to the sink's dump file and a
#     sample is checked (dkimpy verifies DKIM, one-click URLs distinct, VERP sender); the run
#     fails (exit 4) if a check fails. Slower: the dump costs the sink ~110 µs per copy.
#   - mailman3.sh with MODES (default "personalized": one copy per recipient with VERP, like
#     Plenary's, but without DKIM) for sizes in MAILMAN_SIZES (default: all of SIZES). A
#     Mailman run at 100,000 members takes over 20 minutes and may hit CAP (1200 s); a hit
#     cap is reported with how far it got.
# The ceiling is `openssl speed -seconds 3 -multi $(nproc) rsa2048` (ceiling.sh) before the
# first run and after the last; ratios are against the higher of the two.
#
# Output: every result line (JSON) to $OUT (default $WORK/fanout-run-<UTC time>.jsonl) and a
# summary table on stdout; progress on stderr. Knobs: REPS, MODES, MAILMAN_SIZES, OUT, plus
# everything plenary.sh and mailman3.sh take (NO_BUILD, CAP, CONCURRENCY, BATCH, WORK...).
# Needs root, postfix, openssl and Debian's mailman3 (mailman3.sh installs it if missing).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SIZES=("$@")
[ ${#SIZES[@]} -gt 0 ] || SIZES=(1000 10000 100000)
for n in "${SIZES[@]}"; do [[ "$n" =~ ^[0-9]+$ ]] || { echo "sizes must be numbers: $n" >&2; exit 2; }; done
REPS=${REPS:-5}
export MODES=${MODES:-personalized}
MAILMAN_SIZES=${MAILMAN_SIZES:-${SIZES[*]}}
WORK=${WORK:-/tmp}
OUT=${OUT:-$WORK/fanout-run-$(date -u +%Y%m%dT%H%M%SZ).jsonl}
export LC_ALL=C.UTF-8

log() { printf '[%s] run.sh: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
record() {  # kind json...: append each JSON line, tagged with what produced it
  local kind=$1 line; shift
  while IFS= read -r line; do
    [ -n "$line" ] || continue
    printf '{"run":"%s",%s\n' "$kind" "${line#\{}" >>"$OUT"
  done <<<"$*"
}

: >"$OUT"
log "results to $OUT; sizes ${SIZES[*]}; Mailman at: $MAILMAN_SIZES; $REPS counting runs per size"
log "commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
# Build once up front, so no run pays for it.
if [ "${NO_BUILD:-0}" != 1 ]; then
  (cd "$ROOT" && cargo build --release -p plenary) >&2
fi
export NO_BUILD=1

record ceiling_before "$("$HERE/ceiling.sh")"
rc=0
for n in "${SIZES[@]}"; do
  for i in $(seq 1 "$REPS"); do
    log "plenary, $n members, counting sink ($i/$REPS)"
    record plenary_count "$(SINK=count "$HERE/plenary.sh" "$n")" || rc=1
  done
  log "plenary, $n members, dumping sink with checks"
  j=$(SINK=dump "$HERE/plenary.sh" "$n") || { log "plenary.sh (dump) failed its checks or did not run"; rc=4; }
  record plenary_dump "$j"
  if [[ " $MAILMAN_SIZES " == *" $n "* ]]; then
    log "mailman3, $n members, modes: $MODES"
    record mailman3 "$("$HERE/mailman3.sh" "$n")" || rc=1
  fi
done
record ceiling_after "$("$HERE/ceiling.sh")"

/usr/bin/python3 - "$OUT" "$REPS" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
reps = int(sys.argv[2])
ceil = max(r["rsa2048_sign_per_s"] for r in rows if r["run"].startswith("ceiling"))
cb = [r["rsa2048_sign_per_s"] for r in rows if r["run"] == "ceiling_before"]
ca = [r["rsa2048_sign_per_s"] for r in rows if r["run"] == "ceiling_after"]
print("signing ceiling (RSA-2048 signatures/s, all cores): before %s, after %s; ratios use %.0f" % (cb, ca, ceil))
print("| members | Plenary, counting sink (median of %d) | %% of ceiling | to last recipient | "
      "Plenary, dumping sink + checks | Mailman 3 (%s) | Plenary / Mailman |"
      % (reps, "personalized + VERP, no DKIM"))
print("|---|---|---|---|---|---|---|")
for n in sorted({r["members"] for r in rows if r["run"] == "plenary_count"}):
    cnt = [r for r in rows if r["run"] == "plenary_count" and r["members"] == n]
    med = statistics.median(r["recipients_per_s"] for r in cnt)
    secs = statistics.median(r["seconds"] for r in cnt)
    d = [r for r in rows if r["run"] == "plenary_dump" and r["members"] == n]
    v = d[0].get("verify", {}) if d else {}
    dump = ("%.0f/s in %.2f s (%.1f %%), DKIM %s/%s valid" % (
        d[0]["recipients_per_s"], d[0]["seconds"], 100 * d[0]["recipients_per_s"] / ceil,
        v.get("dkim_valid"), v.get("dkim_checked"))) if d else "not run"
    mm = [r for r in rows if r["run"] == "mailman3" and r["members"] == n and r["mode"] == "personalized"]
    if mm:
        m = mm[0]
        mtxt = "%.1f/s, %s in %.1f s%s" % (m["recipients_per_s"], m["delivered"], m["seconds"],
                                          " (cap hit)" if m["timed_out"] else "")
        ratio = "%.0fx" % (med / max(m["recipients_per_s"], 1e-9))
    else:
        mtxt, ratio = "not run", ""
    print("| %d | %.0f/s (runs: %s) | **%.2f %%** | %.3f s | %s | %s | %s |" % (
        n, med, ", ".join("%.0f" % r["recipients_per_s"] for r in cnt), 100 * med / ceil, secs,
        dump, mtxt, ratio))
EOF
log "done (exit $rc); raw results: $OUT"
exit $rc
