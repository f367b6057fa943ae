#!/usr/bin/env bash
# dnssec.sh - the DNSSEC figures of the README (SPEC §11), on 127.0.0.1 only.
#
# 1. Capacity with DO=1 against capacity without DO on a geo policy name with ECS, through
#    ../shared/bench/capacity.sh (one core for the server, one for the generator): first one
#    ECS /24 (BLAST_ECS), then a random /24 per query (BLAST_ECS_RANDOM=1).
# 2. A flood of unique nonexistent names with DO=1 (tools/bench/nx_flood.py): the server's
#    RSS sampled every 5 s, and the unique negative signatures it made.
#
# usage: tools/bench/dnssec.sh [CAPACITY_SH] [FLOOD_SECS]
#   CAPACITY_SH defaults to ../shared/bench/capacity.sh; run from the checkout, after
#   `cargo build --release`.
set -euo pipefail
cd "$(dirname "$0")/../.."
CAP=${1:-../shared/bench/capacity.sh}
FLOOD_SECS=${2:-60}
BIN=${CARGO_TARGET_DIR:-target}/release/meridian
W=$(mktemp -d)
SRV_PID=""
cleanup() { [ -n "$SRV_PID" ] && kill "$SRV_PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT INT TERM

mkdir -p "$W/zones"
cp tests/fixtures/dnssec/signed.toml "$W/zones/"
"$BIN" dnssec keygen signed.test --zones "$W/zones" --state "$W/state" >/dev/null 2>&1
SERVE="$BIN serve --listen 127.0.0.1:\$BENCH_PORT --admin off --rrl off --zones $W/zones --state $W/state --geoip geoip/test-city.mmdb"

cap() { # LABEL; the environment passes BLAST_* through. Prints the summary, sets $qps.
    local out
    out=$(bash "$CAP" -s 5 -p 3 -q geo.signed.test -- "$SERVE" | tail -1)
    echo "$1: $out"
    qps=$(sed -n 's/.* qps=\([0-9.]*\) .*/\1/p' <<<"$out")
}
for ecs in "BLAST_ECS=203.0.113.0/24" "BLAST_ECS=203.0.113.0/24 BLAST_ECS_RANDOM=1"; do
    (export $ecs; cap "no DO, $ecs"; echo "$qps" >"$W/plain")
    (export $ecs BLAST_DO=1; cap "DO=1, $ecs"; echo "$qps" >"$W/signed")
    awk -v s="$(cat "$W/signed")" -v p="$(cat "$W/plain")" -v e="$ecs" \
        'BEGIN { printf "ratio DO/noDO (%s): %.3f\n", e, (p > 0 ? s / p : 0) }'
done

# The flood: server on CPU 0, generator on CPU 1.
PORT=15390 ADMIN=15391
taskset -c 0 "$BIN" serve --listen 127.0.0.1:$PORT --admin 127.0.0.1:$ADMIN --rrl off --zones "$W/zones" \
    --state "$W/state" --geoip geoip/test-city.mmdb >"$W/serve.log" 2>&1 &
SRV_PID=$!
for _ in $(seq 1 50); do
    curl -sf "http://127.0.0.1:$ADMIN/healthz" >/dev/null 2>&1 && break
    sleep 0.2
done
rss() { awk '/VmRSS/ { print $2 }' "/proc/$SRV_PID/status"; }
echo "flood: rss before ${FLOOD_SECS}s of unique names: $(rss) kB"
timeout $((FLOOD_SECS + 10)) taskset -c 1 python3 tools/bench/nx_flood.py $PORT "$FLOOD_SECS" signed.test 64 \
    >"$W/flood.out" &
FLOOD_PID=$!
for t in $(seq 5 5 "$FLOOD_SECS"); do
    sleep 5
    echo "flood: t=${t}s rss=$(rss) kB"
done
wait "$FLOOD_PID" || true
echo "flood: $(cat "$W/flood.out")"
sleep 1.5
curl -sf "http://127.0.0.1:$ADMIN/metrics" | grep -E '^meridian_dnssec_' | sed 's/^/flood: /'
echo "flood: rss after: $(rss) kB"

# 3. CPU per query (robust on a busy machine, unlike qps): the server's user+system time over
#    a 5 s blast divided by the answers, without and with DO, on the same server.
kill "$SRV_PID" 2>/dev/null; wait "$SRV_PID" 2>/dev/null || true
cc -O2 -o "$W/udp_blast" "$(dirname "$CAP")/udp_blast.c"
taskset -c 0 "$BIN" serve --listen 127.0.0.1:$PORT --admin off --rrl off --zones "$W/zones" \
    --state "$W/state" --geoip geoip/test-city.mmdb >"$W/serve2.log" 2>&1 &
SRV_PID=$!
sleep 1
cpu() { awk '{ print $14 + $15 }' "/proc/$SRV_PID/stat"; }
tck=$(getconf CLK_TCK)
for round in 1 2 3; do
    for mode in nodo do nodo-random do-random; do
        envs="BLAST_ECS=203.0.113.0/24"
        case $mode in *random) envs="$envs BLAST_ECS_RANDOM=1" ;; esac
        case $mode in do*) envs="$envs BLAST_DO=1" ;; esac
        before=$(cpu)
        out=$(env $envs taskset -c 1 "$W/udp_blast" $PORT 5 geo.signed.test 256 32 8)
        after=$(cpu)
        answered=$(sed -n 's/.*answered=\([0-9]*\).*/\1/p' <<<"$out")
        awk -v a="$answered" -v c=$((after - before)) -v t="$tck" -v m="$mode" -v r="$round" \
            'BEGIN { printf "cpu: round %d %-11s answered=%d cpu_us_per_query=%.2f\n", r, m, a, (a > 0 ? 1e6 * c / t / a : 0) }'
    done
done
