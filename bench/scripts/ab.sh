#!/usr/bin/env bash
# Two or more chatgw builds side by side on one 1:1 load: the same prepared
# data dir (2,000 users signed up once), the same load generator, each rate
# run for each build in turn, ROUNDS times. For a change's effect on server
# CPU and latency before a full bench/compare.sh.
#
#   cp target/release/chatgw /tmp/chatgw-before   # (build, then the change)
#   cargo build --release -p chatgw
#   bash bench/scripts/ab.sh before=/tmp/chatgw-before after=target/release/chatgw
#
# Environment: RATES ("1000 5000" msg/s), ROUNDS (2), SECS (15 s a run),
# AB_USERS (2000), AB_PORT (18190), AB_WORK (a temp dir kept between runs
# of the script: delete it to sign up again). The first build given signs
# the users up and runs the load generator.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: ab.sh NAME=BINARY NAME=BINARY..." >&2; exit 2; }
users=${AB_USERS:-2000}
addr=127.0.0.1:${AB_PORT:-18190}
work=${AB_WORK:-${TMPDIR:-/tmp}/chatgw-ab}
loadgen=${1#*=}
serve_flags=(--listen "$addr" --rate-limit 0 --max-connections-per-ip 0 --max-new-connections-per-ip-per-s 0
    --max-signups-per-ip-per-min 0 --channel-changes-per-min 0)
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; true' EXIT
start() { # BINARY DATA_DIR
    "$1" serve "${serve_flags[@]}" --data-dir "$2" >>"$work/server.log" 2>&1 &
    pid=$!
    for _ in $(seq 200); do
        curl -fs "http://$addr/readyz" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "the server did not start; see $work/server.log" >&2
    exit 1
}
stop() { kill "$pid"; wait "$pid" || true; pid=; }
if [ ! -f "$work/users.json" ]; then
    rm -rf "$work"
    mkdir -p "$work"
    start "$loadgen" "$work/prepared"
    "$loadgen" loadgen idle --addr "$addr" --connections 1 --users "$users" --users-file "$work/users.json" \
        --hold-s 0 --server-pid "$pid" >/dev/null 2>&1
    stop
fi
for round in $(seq "${ROUNDS:-2}"); do
    for rate in ${RATES:-1000 5000}; do
        for build in "$@"; do
            name=${build%%=*}
            rm -rf "$work/data"
            cp -r "$work/prepared" "$work/data"
            start "${build#*=}" "$work/data"
            "$loadgen" loadgen dm --addr "$addr" --server-pid "$pid" --users "$users" --rate "$rate" \
                --duration-s "${SECS:-15}" --workers 1 --users-file "$work/users.json" --json \
                >"$work/dm.json" 2>"$work/dm.err" || { echo "the load generator failed:" >&2; tail -3 "$work/dm.err" >&2; }
            stop
            python3 - "$work/dm.json" "$round" "$rate" "$name" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
latency = report["delivery_latency"]
print(f"round {sys.argv[2]} {sys.argv[3]:>6} msg/s {sys.argv[4]:>10}: server CPU s per 1k delivered "
      f"{report['server_cpu_s_per_1000_delivered']:.3f}, p50 {latency['p50_ms']:.3f} ms, "
      f"p99 {latency['p99_ms']:.3f} ms, lost {report['lost']}")
PY
        done
    done
done
