#!/usr/bin/env bash
# RADIUS, side by side in one run, with the same load generator and settings:
#   FreeRADIUS 3.2 (Debian `freeradius`): PAP against its `files` module, from a config
#       generated here; Message-Authenticator required on requests
#   sparekey-radiusd: the same users, every verification durably consumed and audited
#       (synchronous = "full": one fsync per committed batch)
#   null responder: sparekey-radiusd's packet handling with an in-memory map instead of
#       a store (the ceiling)
#   durable null: the null responder, also writing LOG_BYTES per answer to a file on the
#       store's disk and syncing it before each batch's answers leave, as sparekey-radiusd
#       syncs its log (the ceiling for anything that makes each answer durable here)
# Each server is driven in turn, A B C D A B C D..., ROUNDS times, closed loop at CONCURRENCY
# requests in flight, then open loop at half of sparekey-radiusd's median peak rate.
#
#   bench/radius-bench.sh                     USERS=10000 ROUNDS=3 DURATION=10 CONCURRENCY=256
#   ROUNDS=5 DURATION=20 bench/radius-bench.sh
#   COMMIT_INTERVAL_US=0 bench/radius-bench.sh  sparekey-radiusd's [radius] commit_interval_us
#   WRITER_NICE=0 bench/radius-bench.sh         [radius] writer_nice of sparekey-radiusd and both
#                                               nulls (default -5; below 0 needs root or CAP_SYS_NICE)
#   TIMELINES=DIR bench/radius-bench.sh         also keep each run's answers in DIR, one file
#                                               per run (NN-server-loop.txt: `sparekey-bench
#                                               load --timeline`: sent_at_us latency_us)
#
# Needs the Debian packages freeradius and freeradius-utils. Leaves nothing behind.
set -euo pipefail
cd "$(dirname "$0")/.."

USERS=${USERS:-10000}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONCURRENCY=${CONCURRENCY:-256}
SOCKETS=${SOCKETS:-4}
WRONG=${WRONG:-0.1}
COMMIT_INTERVAL_US=${COMMIT_INTERVAL_US:-}
WRITER_NICE=${WRITER_NICE:--5}
LOG_BYTES=${LOG_BYTES:-2048}
TIMELINES=${TIMELINES:-}
[ -z "$TIMELINES" ] || mkdir -p "$TIMELINES"
command -v freeradius >/dev/null || { echo "radius-bench: install freeradius" >&2; exit 2; }

cargo build --quiet --release --locked -p sparekey-radiusd -p sparekey-bench
bin=$PWD/target/release
dir=$(mktemp -d "${TMPDIR:-/tmp}/radius-bench.XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT

secret=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
port_sk=18201 port_fr=18202 port_null=18203 port_dnull=18204
"$bin/sparekey-bench" setup --dir "$dir/sk" --users "$USERS" --listen "127.0.0.1:$port_sk" --secret "$secret" --synchronous full
if [ -n "$COMMIT_INTERVAL_US" ]; then
    sed -i "s/^\[radius\]\$/[radius]\ncommit_interval_us = $COMMIT_INTERVAL_US/" "$dir/sk/sparekey.toml"
fi
sed -i "s/^\[radius\]\$/[radius]\nwriter_nice = $WRITER_NICE/" "$dir/sk/sparekey.toml"

# FreeRADIUS: a self-contained config in $dir/fr.
mkdir -p "$dir/fr"
cp "$dir/sk/freeradius-users" "$dir/fr/users"
ln -s /usr/share/freeradius/dictionary "$dir/fr/dictionary"
cat >"$dir/fr/radiusd.conf" <<CONF
prefix = /usr
exec_prefix = /usr
sysconfdir = /etc
localstatedir = /var
sbindir = /usr/sbin
confdir = $dir/fr
logdir = \${confdir}
raddbdir = \${confdir}
radacctdir = \${confdir}
run_dir = \${confdir}
db_dir = \${confdir}
libdir = /usr/lib/freeradius
pidfile = \${run_dir}/radiusd.pid
name = freeradius
correct_escapes = true
max_request_time = 30
cleanup_delay = 5
max_requests = 1048576
hostname_lookups = no
log {
	destination = stderr
	auth = no
}
security {
	allow_core_dumps = no
	max_attributes = 200
	reject_delay = 0
	status_server = yes
}
thread pool {
	start_servers = 8
	max_servers = 32
	min_spare_servers = 4
	max_spare_servers = 16
	max_requests_per_server = 0
}
client bench {
	ipaddr = 127.0.0.1
	secret = $secret
	require_message_authenticator = yes
}
modules {
	pap {
		normalise = no
	}
	files {
		filename = \${confdir}/users
	}
}
server default {
	listen {
		type = auth
		ipaddr = 127.0.0.1
		port = $port_fr
	}
	authorize {
		files
		pap
	}
	authenticate {
		Auth-Type PAP {
			pap
		}
	}
}
CONF

freeradius -f -d "$dir/fr" -n radiusd >"$dir/fr.log" 2>&1 & pids+=($!)
"$bin/sparekey-radiusd" --config "$dir/sk/sparekey.toml" --log-level warn >"$dir/sk.log" 2>&1 & pids+=($!)
"$bin/sparekey-bench" null-responder --listen "127.0.0.1:$port_null" --secret "$secret" --users "$dir/sk/users.csv" \
    --writer-nice "$WRITER_NICE" >"$dir/null.log" 2>&1 & pids+=($!)
"$bin/sparekey-bench" null-responder --listen "127.0.0.1:$port_dnull" --secret "$secret" --users "$dir/sk/users.csv" \
    --sync-log "$dir/durable-null.log" --log-bytes "$LOG_BYTES" --writer-nice "$WRITER_NICE" \
    >"$dir/dnull.log" 2>&1 & pids+=($!)

# A run with a lost or unexpected answer still prints its figures (and exits 1): it is
# kept, and the table says "NO" for that server, instead of ending the whole run.
runs=0
load() { # name port extra-args...
    local name=$1 port=$2; shift 2
    local timeline=()
    runs=$((runs + 1))
    if [ -n "$TIMELINES" ]; then
        timeline=(--timeline "$TIMELINES/$(printf %02d "$runs")-$name-${1#--}.txt")
    fi
    { "$bin/sparekey-bench" load --server "127.0.0.1:$port" --secret "$secret" --users "$dir/sk/users.csv" \
        --duration "$DURATION" --sockets "$SOCKETS" --wrong-ratio "$WRONG" --json "${timeline[@]}" "$@" || true; } \
        | sed "s/^/{\"server\":\"$name\",\"args\":\"$*\",\"r\":/; s/\$/}/"
}
# Wait (bounded) until each answers.
for port in $port_fr $port_sk $port_null $port_dnull; do
    lenient=; [ "$port" = "$port_fr" ] && lenient=--lenient-replies
    for _ in $(seq 50); do
        "$bin/sparekey-bench" load --server "127.0.0.1:$port" --secret "$secret" --users "$dir/sk/users.csv" \
            --requests 10 --duration 5 --timeout-ms 200 --retries 0 --wrong-ratio 0 $lenient >/dev/null 2>&1 && break
    done
done

results=$dir/results.jsonl
echo "closed loop, $CONCURRENCY in flight, $DURATION s per run, $ROUNDS rounds" >&2
for r in $(seq "$ROUNDS"); do
    load freeradius "$port_fr" --concurrency "$CONCURRENCY" --lenient-replies >>"$results"
    load sparekey "$port_sk" --concurrency "$CONCURRENCY" >>"$results"
    load null "$port_null" --concurrency "$CONCURRENCY" >>"$results"
    load durable-null "$port_dnull" --concurrency "$CONCURRENCY" >>"$results"
done
peak=$(python3 -c '
import json,sys,statistics
rs=[json.loads(l) for l in open(sys.argv[1])]
print(int(statistics.median(x["r"]["rate"] for x in rs if x["server"]=="sparekey")))' "$results")
half=$((peak / 2))
echo "open loop at $half req/s (half of sparekey-radiusd's median peak)" >&2
for r in $(seq "$ROUNDS"); do
    load freeradius "$port_fr" --rate "$half" --lenient-replies >>"$results"
    load sparekey "$port_sk" --rate "$half" >>"$results"
    load null "$port_null" --rate "$half" >>"$results"
    load durable-null "$port_dnull" --rate "$half" >>"$results"
done

python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def table(kind):
    sel = [r for r in rows if r["args"].startswith(kind)]
    out = {}
    for name in ("freeradius", "sparekey", "null", "durable-null"):
        rs = [r["r"] for r in sel if r["server"] == name]
        if not rs:
            continue
        rate = [x["rate"] for x in rs]
        p50 = [x["p50_ms"] for x in rs]
        p99 = [x["p99_ms"] for x in rs]
        ok = all(x["unexpected"] == 0 and x["bad_replies"] == 0 and x["lost"] == 0 for x in rs)
        lost = sum(x["lost"] for x in rs)
        out[name] = statistics.median(rate)
        print(f"| {kind} | {name} | {statistics.median(rate):.0f} ({min(rate):.0f}-{max(rate):.0f}) | "
              f"{statistics.median(p50):.2f} | {statistics.median(p99):.2f} ({min(p99):.2f}-{max(p99):.2f}) | {'yes' if ok else f'NO ({lost} lost)'} |")
    return out
print("| loop | server | req/s median (min-max) | p50 ms | p99 ms median (min-max) | all answered as expected |")
print("| --- | --- | ---: | ---: | ---: | --- |")
closed = table("--concurrency")
table("--rate")
if {"freeradius", "sparekey", "null"} <= closed.keys():
    print()
    print(f"sparekey / FreeRADIUS = {closed['sparekey'] / closed['freeradius']:.2f}; "
          f"null / sparekey = {closed['null'] / closed['sparekey']:.2f}")
if {"sparekey", "durable-null"} <= closed.keys():
    print(f"durable null / sparekey = {closed['durable-null'] / closed['sparekey']:.2f}")
PY
