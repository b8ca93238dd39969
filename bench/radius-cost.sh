#!/usr/bin/env bash
# What one RADIUS request costs sparekey-radiusd and the null responder, measured in ways
# that a busy machine does not distort much (wall-clock rates are radius-bench.sh's job):
#
#   instructions  user-space instructions per request, by thread kind (network: the tokio
#                 workers; writer; checkpointer), from valgrind's callgrind. The server runs
#                 twice, for N1 and for N2 requests; the difference over N2-N1 leaves out
#                 start-up and shutdown. callgrind sees no kernel time, and its CPU has no
#                 SHA extensions, so the writer's HMAC-SHA256 counts at its software cost.
#   syscalls      system calls per request, all threads (strace -c -f over N requests).
#   cpu           CPU time per request by thread kind, user+system, from /proc, over a
#                 closed-loop run of DURATION seconds at CONCURRENCY in flight.
#
#   bench/radius-cost.sh instructions              # both servers
#   bench/radius-cost.sh syscalls sparekey
#   ROUNDS=3 bench/radius-cost.sh cpu null
#
# Environment: BIN (directory with sparekey-radiusd and sparekey-bench; default
# target/release, built if missing), USERS=10000, N1=2000, N2=10000, N=20000, DURATION=5,
# CONCURRENCY=256, ROUNDS=1. Needs valgrind and strace. Leaves nothing behind.
set -euo pipefail
cd "$(dirname "$0")/.."

what=${1:?instructions, syscalls or cpu}
shift
servers=("$@")
[ ${#servers[@]} -gt 0 ] || servers=(sparekey null)
USERS=${USERS:-10000}
N1=${N1:-2000}
N2=${N2:-10000}
N=${N:-20000}
DURATION=${DURATION:-5}
CONCURRENCY=${CONCURRENCY:-256}
ROUNDS=${ROUNDS:-1}
if [ -z "${BIN:-}" ]; then
    cargo build --quiet --release --locked -p sparekey-radiusd -p sparekey-bench
    BIN=$PWD/target/release
fi

dir=$(mktemp -d "${TMPDIR:-/tmp}/radius-cost.XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT

secret=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
port_sk=18291 port_null=18292
"$BIN/sparekey-bench" setup --dir "$dir/template" --users "$USERS" --listen "127.0.0.1:$port_sk" \
    --secret "$secret" --synchronous full >/dev/null
users=$dir/template/users.csv

# start SERVER [wrapper...]: starts it (a fresh copy of the store for sparekey-radiusd),
# sets $pid and $port.
start() {
    local server=$1
    shift
    if [ "$server" = sparekey ]; then
        rm -rf "$dir/sk"
        cp -a "$dir/template" "$dir/sk"
        sed -i "s#$dir/template/#$dir/sk/#" "$dir/sk/sparekey.toml"
        "$@" "$BIN/sparekey-radiusd" --config "$dir/sk/sparekey.toml" --log-level warn >"$dir/server.log" 2>&1 &
        port=$port_sk
    else
        "$@" "$BIN/sparekey-bench" null-responder --listen "127.0.0.1:$port_null" --secret "$secret" \
            --users "$users" >"$dir/server.log" 2>&1 &
        port=$port_null
    fi
    pid=$!
    pids+=("$pid")
    for _ in $(seq 200); do
        "$BIN/sparekey-bench" load --server "127.0.0.1:$port" --secret "$secret" --users "$users" \
            --requests 5 --duration 5 --timeout-ms 500 --retries 0 --wrong-ratio 0 >/dev/null 2>&1 && return
        sleep 0.2
    done
    echo "radius-cost: $server did not answer" >&2
    exit 1
}

stop() {
    kill -TERM "$pid"
    wait "$pid" || true
}

# load ARGS...: the generator, every answer checked; no retransmissions, so each request
# is handled once. Its report goes to $dir/load.json. A wrong answer stops the script; a
# lost request (a datagram dropped somewhere) is reported with the figures.
load() {
    "$BIN/sparekey-bench" load --server "127.0.0.1:$port" --secret "$secret" --users "$users" \
        --sockets 4 --wrong-ratio 0.1 --timeout-ms 30000 --retries 0 --json "$@" >"$dir/load.json" ||
        python3 - "$dir/load.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
if r["unexpected"] or r["bad_replies"]:
    sys.exit(f"radius-cost: wrong answers: {r}")
print(f"radius-cost: {r['lost']} of {r['sent']} requests lost", file=sys.stderr)
PY
}

# Thread kind of a callgrind part file or a /proc thread name.
classify_py='
def kind(name, text="", thread=0):
    if thread == 1:
        return "main"
    if name.startswith("store-writer") or ("writer::run" in text and "server::receive" not in text):
        return "writer"
    if name.startswith("checkpoint") or ("checkpoint" in text and "server::" not in text):
        return "checkpointer"
    if name.startswith("tokio") or "server::receive" in text or "server::run" in text:
        return "network"
    return "main"
'

instructions() {
    local server=$1 n
    for n in "$N1" "$N2"; do
        start "$server" valgrind --tool=callgrind --separate-threads=yes \
            --callgrind-out-file="$dir/cg.$server.$n"
        load --requests "$n" --duration 3600 --concurrency 64
        stop
    done
    python3 - "$dir/cg.$server" "$N1" "$N2" "$server" <<PY
import glob, re, sys
$classify_py
base, n1, n2, server = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
def totals(n):
    t = {}
    for f in glob.glob(f"{base}.{n}-*"):
        text = open(f).read()
        m = re.search(r"^summary: (\d+)", text, re.M)
        if m:
            k = kind("", text, int(re.search(r"^thread: (\d+)", text, re.M).group(1)))
            t[k] = t.get(k, 0) + int(m.group(1))
    return t
a, b = totals(n1), totals(n2)
per = {k: (b.get(k, 0) - a.get(k, 0)) / (n2 - n1) for k in ("network", "writer", "checkpointer", "main")}
print(f"{server}: instructions per request: " + ", ".join(f"{k} {v:,.0f}" for k, v in per.items())
      + f"; total {sum(per.values()):,.0f}")
PY
}

syscalls() {
    local server=$1
    start "$server"
    strace -c -f -p "$pid" -o "$dir/strace.txt" &
    local tracer=$!
    sleep 1
    load --requests "$N" --duration 3600 --concurrency "$CONCURRENCY"
    sleep 0.5
    kill -INT "$tracer"
    wait "$tracer" || true
    stop
    python3 - "$dir/strace.txt" "$N" "$server" <<'PY'
import sys
path, n, server = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rows = []
for line in open(path):
    p = line.split()
    if len(p) >= 5 and p[0][0].isdigit() and p[-1] != "total":
        rows.append((p[-1], int(p[3])))
rows.sort(key=lambda r: -r[1])
print(f"{server}: system calls per request: total {sum(c for _, c in rows) / n:.3f}; "
      + ", ".join(f"{name} {c / n:.3f}" for name, c in rows if c / n >= 0.005))
PY
}

snapshot() { # pid -> "name<TAB>utime<TAB>stime" per thread
    local t
    for t in /proc/"$1"/task/*; do
        python3 -c '
import sys
s = open(sys.argv[1]).read()
name = s[s.index("(") + 1:s.rindex(")")]
f = s[s.rindex(")") + 2:].split()
print(f"{name}\t{f[11]}\t{f[12]}")' "$t/stat"
    done
}

cpu() {
    local server=$1
    start "$server"
    snapshot "$pid" >"$dir/cpu.before"
    load --duration "$DURATION" --concurrency "$CONCURRENCY"
    snapshot "$pid" >"$dir/cpu.after"
    stop
    python3 - "$dir" "$server" "$(getconf CLK_TCK)" <<PY
import json, sys
$classify_py
d, server, tick = sys.argv[1], sys.argv[2], int(sys.argv[3])
def read(f):
    t = {}
    for line in open(f"{d}/{f}"):
        name, u, s = line.rstrip("\n").split("\t")
        k = kind(name)
        a = t.setdefault(k, [0, 0])
        a[0] += int(u); a[1] += int(s)
    return t
a, b = read("cpu.before"), read("cpu.after")
r = json.load(open(f"{d}/load.json"))
n = r["answered"]
parts = []
for k in ("network", "writer", "checkpointer", "main"):
    if k in b:
        u = (b[k][0] - a.get(k, [0, 0])[0]) / tick * 1e6 / n
        s = (b[k][1] - a.get(k, [0, 0])[1]) / tick * 1e6 / n
        parts.append(f"{k} {u:.1f}+{s:.1f}")
print(f"{server}: {r['rate']:.0f} req/s, CPU us per request (user+system): " + ", ".join(parts)
      + (f"; {r['lost']} lost" if r["lost"] else ""))
PY
}

for _ in $(seq "$ROUNDS"); do
    for s in "${servers[@]}"; do
        case $what in
            instructions) instructions "$s" ;;
            syscalls) syscalls "$s" ;;
            cpu) cpu "$s" ;;
            *) echo "radius-cost: instructions, syscalls or cpu" >&2; exit 2 ;;
        esac
    done
done
