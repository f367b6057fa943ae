#!/usr/bin/env bash
# ab.sh - two Meridian binaries side by side: is B faster than A?
#
# Starts both on CPU 0 (127.0.0.1, two ports, the example zone with every pool up, --admin off,
# --rrl off) and blasts them in turn from CPU 1 with ../shared/bench/udp_blast.c, round after
# round (A first in odd rounds, B first in even ones), so that drift in the machine's speed
# hits both alike. Prints each round's qps and, last, the median of each and the median of
# the per-round ratios B/A (>1: B faster). Use it before and after a change; side-by-side.sh
# compares with gdnsd.
#
# usage: ab.sh [-r ROUNDS] [-s SECS] [-k KIND] [-d MMDB] BIN_A BIN_B
#   ROUNDS=8, SECS=2; KIND: geo1 (one ECS /24), rand24 (a random /24 per query, the default)
#   or static (a one-A-record name, no ECS); MMDB: --geoip for both (default: the test
#   database).
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
SHARED=${SHARED:-$(cd "$REPO/.." && pwd)/shared/bench}
[ -d "$SHARED" ] || SHARED=/work/shared/bench
ROUNDS=8 SECS=2 KIND=rand24 MMDB=$REPO/geoip/test-city.mmdb
while getopts "r:s:k:d:" o; do
    case $o in
        r) ROUNDS=$OPTARG ;; s) SECS=$OPTARG ;; k) KIND=$OPTARG ;; d) MMDB=$OPTARG ;;
        *) sed -n '2,14p' "$0"; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
[ $# -eq 2 ] && [ -x "$1" ] && [ -x "$2" ] || { sed -n '2,14p' "$0"; exit 2; }
[ "$ROUNDS" -ge 1 ] && [ "$ROUNDS" -le 50 ] || { echo "rounds: 1..50"; exit 2; }
A=$1 B=$2

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM
cc -O2 -o "$WORK/udp_blast" "$SHARED/udp_blast.c" || { echo "cannot build udp_blast"; exit 2; }

mkdir -p "$WORK/zones" "$WORK/state"
sed '/^check = /d' "$REPO/zones/example.toml" >"$WORK/zones/example.toml"
printf '\n[records.one]\nA = ["192.0.2.10"]\n' >>"$WORK/zones/example.toml"
ENVV=() Q=www.gslb.example.test
case $KIND in
    static) Q=one.gslb.example.test ;;
    geo1) ENVV=(BLAST_ECS=203.0.113.7/24) ;;
    rand24) ENVV=(BLAST_ECS=203.0.113.7/24 BLAST_ECS_RANDOM=1) ;;
    *) echo "unknown kind $KIND"; exit 2 ;;
esac

blast() { # PORT SECS -> qps
    env "${ENVV[@]}" timeout $((${2%.*} + 10)) taskset -c 1 "$WORK/udp_blast" "$1" "$2" "$Q" 256 32 8 \
        | sed -n 's/.*qps=\([0-9]*\).*/\1/p'
}

PORTS=(15380 15381)
for i in 0 1; do
    bin=$A; [ "$i" -eq 1 ] && bin=$B
    taskset -c 0 "$bin" serve --listen "127.0.0.1:${PORTS[$i]}" --admin off --rrl off \
        --zones "$WORK/zones" --state "$WORK/state" --geoip "$MMDB" >"$WORK/log$i" 2>&1 &
    PIDS+=($!)
done
# Ready when each answers (a City database takes seconds to compile); at most 2 minutes.
for i in 0 1; do
    for _ in $(seq 1 120); do
        [ "$(blast "${PORTS[$i]}" 0.2)" -gt 0 ] 2>/dev/null && break
        kill -0 "${PIDS[$i]}" 2>/dev/null || { echo "server $i exited:"; tail -5 "$WORK/log$i"; exit 1; }
        sleep 1
    done
done

echo "ab: kind=$KIND rounds=$ROUNDS secs=$SECS A=$A B=$B"
for r in $(seq 1 "$ROUNDS"); do
    # Alternate who goes first: the second blast of a round runs on a warmer machine.
    if [ $((r % 2)) -eq 1 ]; then a=$(blast "${PORTS[0]}" "$SECS") b=$(blast "${PORTS[1]}" "$SECS")
    else b=$(blast "${PORTS[1]}" "$SECS") a=$(blast "${PORTS[0]}" "$SECS"); fi
    echo "round $r: A qps=${a:-0} B qps=${b:-0}"
    echo "${a:-0} ${b:-0}" >>"$WORK/rounds"
done
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
ma=$(cut -d' ' -f1 "$WORK/rounds" | median)
mb=$(cut -d' ' -f2 "$WORK/rounds" | median)
mr=$(awk '$1 > 0 { printf "%.4f\n", $2 / $1 }' "$WORK/rounds" | median)
echo "median qps A=$ma B=$mb; per-round B/A median=$mr"
