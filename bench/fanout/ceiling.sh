#!/usr/bin/env bash
# Signing ceiling of this machine: RSA-2048 signatures/s over all cores (DKIM's cost per copy).
#   bench/fanout/ceiling.sh      -> {"rsa2048_sign_per_s": X, ...} on stdout
set -euo pipefail
export LC_ALL=C
np=$(nproc)
out=$(timeout 120 openssl speed -seconds 3 -multi "$np" rsa2048 2>/dev/null)
# the summary table sums the -multi processes: "rsa 2048 bits <s/sign> <s/verify> <sign/s> <verify/s>"
read -r sign verify < <(printf '%s\n' "$out" | awk '/^rsa +2048 bits/ {print $(NF-1), $NF; exit}')
[ -n "${sign:-}" ] || { echo "could not parse openssl speed output" >&2; exit 1; }
printf '{"rsa2048_sign_per_s": %.1f, "rsa2048_verify_per_s": %.1f, "procs": %d, "openssl": "%s"}\n' \
  "$sign" "$verify" "$np" "$(openssl version | cut -d' ' -f2)"
