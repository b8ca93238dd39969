#!/usr/bin/env bash
# PAM, side by side in one run: N full authentications (pam_start, pam_authenticate,
# pam_end) through pamtester, one process each, for
#   pam_permit                      the floor: libpam, pamtester and process start-up
#   pam_google_authenticator        a scratch code (Debian libpam-google-authenticator)
#   pam_sparekey                    a single-use bypass code (release build), with the
#                                   default synchronous = "full" (fsync on every commit)
#                                   and with synchronous = "normal", to show the fsync's share
# Every run uses a new code, every one must succeed. All three run under pam_wrapper
# (service files from a temporary directory; nothing in /etc changes) and read their
# secrets from the same temporary directory.
#
#   bench/pam-bench.sh              N=1000
#   N=200 bench/pam-bench.sh
#
# Needs root (the sparekey store must be root's) and the Debian packages pamtester,
# libpam-wrapper, libpam-google-authenticator and libpam0g-dev (scripts/test-deps).
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-1000}
[ "$(id -u)" -eq 0 ] || { echo "pam-bench: run as root" >&2; exit 2; }
for p in pamtester; do command -v $p >/dev/null || { echo "pam-bench: $p missing (scripts/test-deps)" >&2; exit 2; }; done

cargo build --quiet --release --locked -p pam_sparekey -p sparekey-cli
sk=$PWD/target/release/sparekey
module=$PWD/target/release/libpam_sparekey.so

dir=$(mktemp -d "${TMPDIR:-/tmp}/pam-bench.XXXXXX")
trap 'rm -rf "$dir"' EXIT
chmod 700 "$dir"
mkdir "$dir/svc"

# sparekey: 2N codes, at most 100 per user (the store's limit), 10 per generation.
"$sk" init --dir "$dir/sk" >/dev/null
export SPAREKEY_CONFIG=$dir/sk/sparekey.toml
sed 's/^# synchronous = "full"/synchronous = "normal"/' "$SPAREKEY_CONFIG" > "$dir/sk/normal.toml"
chmod 600 "$dir/sk/normal.toml"
users=$(( (2 * N + 99) / 100 ))
: > "$dir/sk.codes"
for u in $(seq 1 "$users"); do
    "$sk" user add "bench$u" >/dev/null
    "$sk" device add "bench$u" --kind phone >/dev/null
    for _ in $(seq 1 10); do
        "$sk" code generate "bench$u" --count 10 --preserve-existing --valid-secs 86400 \
            | sed "s/^/bench$u /" >> "$dir/sk.codes"
    done
done
head -n "$N" "$dir/sk.codes" > "$dir/sk.run"
tail -n +"$((N + 1))" "$dir/sk.codes" | head -n "$N" > "$dir/sk-normal.run"

# pam_google_authenticator: one secret file holding N scratch codes.
{ echo "JBSWY3DPEHPK3PXP"; echo '" TOTP_AUTH'; seq 10000000 $((10000000 + N - 1)); } > "$dir/ga_gabench"
chmod 600 "$dir/ga_gabench"
seq 10000000 $((10000000 + N - 1)) | sed 's/^/gabench /' > "$dir/ga.run"
seq 1 "$N" | sed 's/.*/anyone 0/' > "$dir/permit.run"

echo "auth required pam_permit.so" > "$dir/svc/permit"
echo "auth required pam_google_authenticator.so secret=$dir/ga_\${USER} user=root" > "$dir/svc/ga"
echo "auth required $module config=$SPAREKEY_CONFIG" > "$dir/svc/sk"
echo "auth required $module config=$dir/sk/normal.toml" > "$dir/svc/sk-normal"

export LC_ALL=C PAM_WRAPPER=1 PAM_WRAPPER_SERVICE_DIR=$dir/svc
run() { # service, file of "user code" lines; prints seconds
    local svc=$1 file=$2 failed=0 start end
    start=$(date +%s.%N)
    while read -r user code; do
        printf '%s\n' "$code" | LD_PRELOAD=libpam_wrapper.so pamtester "$svc" "$user" authenticate \
            >/dev/null 2>"$dir/err" || { failed=$((failed + 1)); cat "$dir/err" >&2; }
    done < "$file"
    end=$(date +%s.%N)
    [ "$failed" -eq 0 ] || { echo "pam-bench: $failed of $N $svc runs failed" >&2; exit 1; }
    echo "$start $end" | awk '{ printf "%.3f", $2 - $1 }'
}

printf '%-28s %8s %12s %10s\n' module runs seconds ms/auth
for case in "pam_permit permit" "pam_google_authenticator ga" "pam_sparekey sk" \
            "pam_sparekey(sync=normal) sk-normal"; do
    set -- $case
    s=$(run "$2" "$dir/$2.run")
    awk -v m="$1" -v n="$N" -v s="$s" 'BEGIN { printf "%-28s %8d %12.3f %10.2f\n", m, n, s, s * 1000 / n }'
done
echo "($(nproc) cores, $(uname -r), $(date -u +%Y-%m-%d))"
