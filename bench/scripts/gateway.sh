#!/usr/bin/env bash
# The gateway benchmarks, on this machine, with the load generator on the
# same cores: server RSS per idle connection, 1:1 latency at a fixed offered
# rate (open loop), and group fan-out against nats-server in the same run.
#
#   bash bench/scripts/gateway.sh            # idle, dm and fanout
#   bash bench/scripts/gateway.sh idle dm    # some of it
#   bash bench/scripts/gateway.sh never-readers  # RSS with 1,000 never-readers
#                                                # next to the same run without
#
# Environment: CHATGW_BENCH_DIR (work dir, default a new temp dir),
# IDLE_CONNECTIONS (15000), IDLE_MAX_KIB (2: idle fails past it), DM_USERS (10000), DM_RATE (20000), DM_SECONDS
# (30), DM_WORKERS (1), FANOUT_SECONDS (10), FANOUT_ROUNDS (3),
# NEVER_READERS_SECONDS (20).
#
# dm's load generator runs one executor by default: on two cores shared with
# the server's two shards, a second loadgen thread doubled its CPU (glommio
# issues a process-wide membarrier each time an executor parks, an IPI to the
# other thread's core) and left less for the server it measures.
set -euo pipefail
cd "$(dirname "$0")/../.."

parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(idle dm fanout)
work=${CHATGW_BENCH_DIR:-$(mktemp -d)}
bin=target/release/chatgw
port=18080
addr=127.0.0.1:$port
users_file=$work/users.json
server_pid=

cargo build --release -p chatgw >&2

stop_server() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=
    fi
}
nats_pid=
stop_nats() {
    if [ -n "$nats_pid" ]; then
        kill "$nats_pid" 2>/dev/null || true
        wait "$nats_pid" 2>/dev/null || true
        nats_pid=
    fi
}
trap 'stop_server; stop_nats' EXIT

start_server() {
    stop_server
    # One load generator on one address: the per-address caps are off.
    "$bin" serve --listen "$addr" --data-dir "$work/data" --rate-limit 0 --max-channel-members 1000 \
        --max-connections-per-ip 0 --max-new-connections-per-ip-per-s 0 --max-signups-per-ip-per-min 0 --channel-changes-per-min 0 \
        >"$work/server.log" 2>&1 &
    server_pid=$!
    for _ in $(seq 100); do
        curl -fs "http://$addr/readyz" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "the server did not become ready; see $work/server.log" >&2
    exit 1
}

# Accounts first (signup hashes passwords), then a fresh server for the
# measurements: freed hashing memory must not absorb what they measure.
start_server
"$bin" loadgen idle --addr "$addr" --connections 1 --users "${DM_USERS:-10000}" --users-file "$users_file" --hold-s 0 >/dev/null

for part in "${parts[@]}"; do
    case $part in
    idle)
        start_server
        echo "== idle: ${IDLE_CONNECTIONS:-15000} connections"
        # Fails past IDLE_MAX_KIB (2) of server RSS per connection: the
        # guard on an idle connection's cost (docs/performance.md).
        "$bin" loadgen idle --addr "$addr" --connections "${IDLE_CONNECTIONS:-15000}" --users 1000 \
            --connect-threads 8 --users-file "$users_file" --server-pid "$server_pid" \
            --max-kib-per-connection "${IDLE_MAX_KIB:-2}"
        ;;
    dm)
        start_server
        echo "== dm: ${DM_USERS:-10000} users at ${DM_RATE:-20000} msg/s"
        "$bin" loadgen dm --addr "$addr" --users "${DM_USERS:-10000}" --rate "${DM_RATE:-20000}" \
            --duration-s "${DM_SECONDS:-30}" --workers "${DM_WORKERS:-1}" --users-file "$users_file"
        ;;
    fanout)
        command -v nats-server >/dev/null || { echo "nats-server is missing: apt-get install nats-server" >&2; exit 1; }
        printf 'listen: 127.0.0.1:14222\nwebsocket { listen: "127.0.0.1:14223", no_tls: true }\n' >"$work/nats.conf"
        nats-server -c "$work/nats.conf" >"$work/nats.log" 2>&1 &
        nats_pid=$!
        start_server
        sleep 1
        : >"$work/fanout.jsonl"
        echo "== fanout: 10 groups of 100, window 16, chatgw and nats-server in turn"
        for round in $(seq "${FANOUT_ROUNDS:-3}"); do
            for target in chatgw nats; do
                target_addr=$addr
                [ $target = nats ] && target_addr=127.0.0.1:14223
                "$bin" loadgen fanout --target $target --addr "$target_addr" --duration-s "${FANOUT_SECONDS:-10}" \
                    --users-file "$users_file" --json | tee -a "$work/fanout.jsonl"
            done
        done
        python3 - "$work/fanout.jsonl" <<'PY'
import json, statistics, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
median = {t: statistics.median(r["deliveries_per_s"] for r in runs if r["target"] == t) for t in ("chatgw", "nats")}
print(f"fanout medians: chatgw {median['chatgw']:.0f}/s, nats-server {median['nats']:.0f}/s, "
      f"ratio {median['chatgw'] / median['nats']:.2f}")
PY
        stop_nats
        ;;
    never-readers)
        # The same 1,000 reading members and traffic (10 groups, 100 reading
        # each, 1 KB texts), with and without 100 more members per group
        # that never read; a fresh server each time, its peak RSS after.
        : >"$work/never-readers.txt"
        for never in 100 0; do
            start_server
            members=$((100 + never))
            "$bin" loadgen fanout --addr "$addr" --groups 10 --members $members --never-readers $never \
                --text-bytes 1000 --duration-s "${NEVER_READERS_SECONDS:-20}" --users-file "$users_file" --json \
                >"$work/never-readers-$never.json"
            hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$server_pid/status")
            rss=$(awk '/^VmRSS/ {print $2}' "/proc/$server_pid/status")
            slow=$(curl -fs "http://$addr/metrics" | awk '/^chatgw_slow_consumers_total/ {s += $2} END {print s + 0}')
            delivered=$(python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(r['delivered'], r['sent'])" \
                "$work/never-readers-$never.json")
            echo "never-readers $((never * 10)): server peak RSS ${hwm} kB, RSS after ${rss} kB," \
                "slow consumers closed $slow, delivered/sent $delivered" | tee -a "$work/never-readers.txt"
        done
        stop_server
        ;;
    *)
        echo "unknown part $part (idle, dm, fanout, never-readers)" >&2
        exit 2
        ;;
    esac
done
echo "work dir: $work"
