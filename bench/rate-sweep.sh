#!/usr/bin/env bash
# sparekey-radiusd alone, open loop at fixed rates, for each [radius] commit_interval_us:
# the tail against the load, and what the commit interval does to it. For each round,
# rate and interval: a fresh store of USERS users, the server, a 3 s closed-loop warm-up,
# then DURATION seconds at the rate. The intervals alternate within each rate.
#
# SERVERS="sparekey durable-null" also runs, beside each, the durable null (the null
# responder writing LOG_BYTES per answer to a file in the same directory and syncing it
# before a batch's answers leave, with the same commit interval): the tail that the disk
# and the machine alone impose on anything that syncs before it answers.
#
#   bench/rate-sweep.sh        RATES="1000 3000 6000 12000" INTERVALS="0 1000 2000" ROUNDS=2
#   RATES=6000 INTERVALS="0 1000" ROUNDS=1 DURATION=5 bench/rate-sweep.sh
#   SERVERS="sparekey durable-null" INTERVALS=1000 RATES="6000 12000 18000" bench/rate-sweep.sh
#   WRITER_NICE=0 bench/rate-sweep.sh   [radius] writer_nice of both servers (default -5; needs root)
#
# SERVERS may also name sparekey@DIR: the sparekey-radiusd in DIR, another build (of an
# earlier commit, say, in a git worktree), run in turn with this one, for a before and after
# on the same machine in the same run:
#
#   git worktree add /tmp/before HEAD~1 && (cd /tmp/before && cargo build --release -p sparekey-radiusd)
#   SERVERS="sparekey@/tmp/before/target/release sparekey" RATES=26000 INTERVALS=1000 ROUNDS=6 bench/rate-sweep.sh
#
# Prints one line per run: server, rate, interval, then the generator's summary (p50,
# p99, ...).
# Leaves nothing behind.
set -euo pipefail
cd "$(dirname "$0")/.."

RATES=${RATES:-1000 3000 6000 12000}
INTERVALS=${INTERVALS:-0 1000 2000}
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-8}
USERS=${USERS:-10000}
SERVERS=${SERVERS:-sparekey}
LOG_BYTES=${LOG_BYTES:-2048}
WRITER_NICE=${WRITER_NICE:--5}
PORT=${PORT:-18204}

cargo build --quiet --release --locked -p sparekey-radiusd -p sparekey-bench
bin=$PWD/target/release
dir=$(mktemp -d "${TMPDIR:-/tmp}/rate-sweep.XXXXXX")
pid=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$dir"
}
trap cleanup EXIT
secret=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
load() {
    "$bin/sparekey-bench" load --server "127.0.0.1:$PORT" --secret "$secret" \
        --users "$dir/sk/users.csv" --sockets 4 "$@"
}

for _ in $(seq "$ROUNDS"); do
    for rate in $RATES; do
        for interval in $INTERVALS; do
          for server in $SERVERS; do
            rm -rf "$dir/sk"
            "$bin/sparekey-bench" setup --dir "$dir/sk" --users "$USERS" \
                --listen "127.0.0.1:$PORT" --secret "$secret" --synchronous full >/dev/null
            sed -i "s/^\[radius\]\$/[radius]\ncommit_interval_us = $interval\nwriter_nice = $WRITER_NICE/" \
                "$dir/sk/sparekey.toml"
            case $server in
                sparekey|sparekey@*)
                    radiusd=$bin/sparekey-radiusd
                    [ "$server" = sparekey ] || radiusd=${server#sparekey@}/sparekey-radiusd
                    "$radiusd" --config "$dir/sk/sparekey.toml" --log-level warn \
                        >"$dir/sk.log" 2>&1 & ;;
                durable-null)
                    "$bin/sparekey-bench" null-responder --listen "127.0.0.1:$PORT" --secret "$secret" \
                        --users "$dir/sk/users.csv" --sync-log "$dir/sk/durable-null.log" \
                        --log-bytes "$LOG_BYTES" --commit-interval-us "$interval" \
                        --writer-nice "$WRITER_NICE" >"$dir/sk.log" 2>&1 & ;;
                *) echo "rate-sweep: no server $server" >&2; exit 2 ;;
            esac
            pid=$!
            # Up once it answers; bounded.
            up=
            for _ in $(seq 50); do
                if load --requests 10 --duration 5 --timeout-ms 200 --retries 0 \
                    --wrong-ratio 0 >/dev/null 2>&1; then
                    up=1
                    break
                fi
            done
            [ -n "$up" ] || { echo "rate-sweep: the server never answered" >&2; cat "$dir/sk.log" >&2; exit 1; }
            load --wrong-ratio 0.1 --concurrency 256 --duration 3 >/dev/null
            # The generator fails the run on a wrong or missing answer.
            out=$(load --wrong-ratio 0.1 --rate "$rate" --duration "$DURATION")
            printf '%-12s rate %-6s interval %-5s %s\n' "$server" "$rate" "$interval" "$(tail -n 1 <<<"$out")"
            kill "$pid"
            wait "$pid" 2>/dev/null || true
            pid=
          done
        done
    done
done
