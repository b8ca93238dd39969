#!/usr/bin/env bash
# sparekey-radiusd on PostgreSQL next to SQLite, in one run, with the same load generator,
# users and settings. Both stores are durable: SQLite with synchronous = "full", and a
# PostgreSQL 15 cluster (scripts/pg-test-cluster ... durable: fsync and synchronous_commit
# on, the defaults) on 127.0.0.1 in a temporary directory, reached over TCP with a password
# (scram-sha-256), without TLS. The PostgreSQL store is a `sparekey store copy` of the
# SQLite one. Each server is driven in turn, A B A B..., ROUNDS times, closed loop at
# CONCURRENCY requests in flight.
#
#   bench/pg-bench.sh                     USERS=10000 ROUNDS=3 DURATION=10 CONCURRENCY=256
#
# Needs the Debian package postgresql. Leaves nothing behind.
set -euo pipefail
cd "$(dirname "$0")/.."

USERS=${USERS:-10000}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONCURRENCY=${CONCURRENCY:-256}
SOCKETS=${SOCKETS:-4}
WRONG=${WRONG:-0.1}

cargo build --quiet --release --locked -p sparekey-radiusd -p sparekey-bench -p sparekey-cli
bin=$PWD/target/release
dir=$(mktemp -d "${TMPDIR:-/tmp}/pg-bench.XXXXXX")
pids=()
pg_pid= pg_in=
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    # The cluster stops and removes itself when its input closes: close it, and wait.
    if [ -n "$pg_pid" ]; then
        eval "exec $pg_in>&-"
        wait "$pg_pid" 2>/dev/null || true
    fi
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

secret=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
port_sq=18211 port_pg=18212 port_db=18213
"$bin/sparekey-bench" setup --dir "$dir/sq" --users "$USERS" --listen "127.0.0.1:$port_sq" \
    --secret "$secret" --synchronous full

# The cluster runs while its input stays open (a coprocess), and cleans up when it closes.
coproc PG { scripts/pg-test-cluster "$port_db" durable; }
pg_pid=$PG_PID pg_in=${PG[1]}
read -r ready _ pgdir <&"${PG[0]}"
[ "$ready" = ready ] || { echo "pg-bench: no PostgreSQL cluster" >&2; exit 2; }
echo "createdb sparekey" >&"$pg_in"
read -r answer <&"${PG[0]}"
[ "$answer" = ok ] || { echo "pg-bench: createdb: $answer" >&2; exit 2; }

mkdir -m 0700 "$dir/pg"
cp "$dir/sq/sparekey.key" "$dir/pg/sparekey.key"
install -m 0600 "$pgdir/password" "$dir/pg/db.password"
sed -e "s|^path = .*|url = \"postgres://postgres@127.0.0.1:$port_db/sparekey\"\npassword_file = \"db.password\"|" \
    -e "s|^key_file = .*|key_file = \"sparekey.key\"|" \
    -e "s|127.0.0.1:$port_sq|127.0.0.1:$port_pg|" "$dir/sq/sparekey.toml" >"$dir/pg/sparekey.toml"
"$bin/sparekey" --config "$dir/sq/sparekey.toml" store copy --to "$dir/pg/sparekey.toml" >&2

"$bin/sparekey-radiusd" --config "$dir/sq/sparekey.toml" --log-level warn >"$dir/sq.log" 2>&1 & pids+=($!)
"$bin/sparekey-radiusd" --config "$dir/pg/sparekey.toml" --log-level warn >"$dir/pg.log" 2>&1 & pids+=($!)

# Wait (bounded) until each answers.
for port in $port_sq $port_pg; do
    for _ in $(seq 50); do
        "$bin/sparekey-bench" load --server "127.0.0.1:$port" --secret "$secret" --users "$dir/sq/users.csv" \
            --requests 10 --duration 5 --timeout-ms 200 --retries 0 --wrong-ratio 0 >/dev/null 2>&1 && break
    done
done

load() { # name port
    printf '%-10s ' "$1"
    "$bin/sparekey-bench" load --server "127.0.0.1:$2" --secret "$secret" --users "$dir/sq/users.csv" \
        --duration "$DURATION" --sockets "$SOCKETS" --wrong-ratio "$WRONG" --concurrency "$CONCURRENCY"
}

echo "closed loop, $CONCURRENCY in flight, $DURATION s per run, $ROUNDS rounds, $USERS users" >&2
for _ in $(seq "$ROUNDS"); do
    load sqlite "$port_sq"
    load postgresql "$port_pg"
done
