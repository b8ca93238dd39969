#!/usr/bin/env bash
# Timing side channel through RADIUS: the response time of each kind of reject (unknown
# user, wrong code, disabled, locked out, not enrolled, bypass denied; a valid code for
# reference), one request in flight, cases interleaved at random, SAMPLES per case, and
# a Kolmogorov-Smirnov and a Mann-Whitney test for every pair of reject cases.
#
# For each SYNC setting (full: one fsync per commit, the default and what a deployment
# runs; normal: no fsync, so that the CPU each path costs is not hidden by the disk) it
# makes a new store with `sparekey-bench timing-setup` (PER_CASE distinct users per case,
# lockout_threshold = 1000 so that no wrong-code user is locked during the run), starts
# the real sparekey-radiusd on it, runs `sparekey-bench timing`, and stops the server.
#
#   bench/timing.sh                      SAMPLES=20000 PER_CASE=2000 SYNC="full normal"
#   SAMPLES=5000 SYNC=normal bench/timing.sh
#   RADIUSD=/path/to/older/sparekey-radiusd bench/timing.sh   (another build of the server)
#
# Leaves nothing behind but what OUT names (default: nothing).
set -euo pipefail
cd "$(dirname "$0")/.."

SAMPLES=${SAMPLES:-20000}
WARMUP=${WARMUP:-2000}
PER_CASE=${PER_CASE:-2000}
SYNC=${SYNC:-full normal}
PORT=${PORT:-18211}
SEED=${SEED:-1}
OUT=${OUT:-}

cargo build --quiet --release --locked -p sparekey-radiusd -p sparekey-bench
bin=$PWD/target/release
RADIUSD=${RADIUSD:-$bin/sparekey-radiusd}
dir=$(mktemp -d "${TMPDIR:-/tmp}/timing-bench.XXXXXX")
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT

secret=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
echo "server $RADIUSD, commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates radius_server || echo '+changes'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
for sync in $SYNC; do
    store=$dir/$sync
    "$bin/sparekey-bench" timing-setup --dir "$store" --per-case "$PER_CASE" \
        --listen "127.0.0.1:$PORT" --secret "$secret" --synchronous "$sync" --seed "$SEED"
    "$RADIUSD" --config "$store/sparekey.toml" --log-level warn >"$store/radiusd.log" 2>&1 &
    pid=$!
    # Wait (bounded) until it answers: one valid request, short timeout, 50 tries.
    for _ in $(seq 50); do
        "$bin/sparekey-bench" timing --server "127.0.0.1:$PORT" --secret "$secret" \
            --users "$store/timing-users.csv" --cases valid_code --samples 1 --warmup 0 \
            --timeout-ms 200 >/dev/null 2>&1 && break
    done
    echo
    echo "### synchronous = \"$sync\": $SAMPLES samples per case after $WARMUP warm-up, $PER_CASE users per case"
    echo
    raw=()
    [ -n "$OUT" ] && { mkdir -p "$OUT"; raw=(--raw "$OUT/timing-$sync.csv"); }
    "$bin/sparekey-bench" timing --server "127.0.0.1:$PORT" --secret "$secret" \
        --users "$store/timing-users.csv" --samples "$SAMPLES" --warmup "$WARMUP" --seed "$SEED" \
        --config "$store/sparekey.toml" "${raw[@]}"
    kill "$pid"
    wait "$pid" || true
    pid=
done
echo
echo "load $(cut -d' ' -f1-3 /proc/loadavg)"
