#!/usr/bin/env bash
# chatgw beside what an operator would pick instead, on this machine, in one
# run: chatgw (release, default durability), nats-server (Debian's package,
# WebSocket listener, no persistence) and chatgw-peer (a plain tokio +
# tokio-tungstenite server of the same protocol subset, history in memory).
#
#   bash bench/compare.sh               # every scenario, 3 rounds
#   bash bench/compare.sh dm idle       # some of them
#
# Scenarios: dm (1:1, open loop, a ladder of offered rates: p50, p99,
# p99.9), fanout (10 groups of 100 at fixed rates and saturated:
# deliveries/s and p99), idle (15,000 idle connections: RSS per connection;
# their ramp is the handshakes/s figure). Every run starts a fresh server,
# reads the server's and the load generator's CPU from /proc over the
# measured phase only, and keeps its JSON report and latency histograms.
# Rounds alternate the servers' order. Then bench/scripts/compare_report.py
# writes the summary, the ratio tables, the plots (through `chatgw report`)
# and bench/RESULTS.md.
#
# Environment: COMPARE_ROUNDS (3), COMPARE_SECONDS (10 of measured load per
# run), COMPARE_SERVERS ("chatgw nats peer"), DM_RATES ("1000 5000 10000
# 20000" msg/s), DM_USERS (2000), FANOUT_RATES ("100 300" msg/s over all
# groups; "saturated" is always added), FANOUT_WINDOW (16 messages in flight
# per sender at fixed rates), FANOUT_SATURATED_WINDOW (64), IDLE_CONNECTIONS (15000),
# COMPARE_OUT (results folder, default bench/results/compare-DATE),
# COMPARE_WORK (scratch, default a new temp dir), COMPARE_RESULTS_MD
# (default bench/RESULTS.md; empty to skip).
set -euo pipefail
cd "$(dirname "$0")/.."

scenarios=("$@")
[ ${#scenarios[@]} -eq 0 ] && scenarios=(dm fanout idle)
rounds=${COMPARE_ROUNDS:-3}
seconds=${COMPARE_SECONDS:-10}
read -r -a servers <<<"${COMPARE_SERVERS:-chatgw nats peer}"
read -r -a dm_rates <<<"${DM_RATES:-1000 5000 10000 20000}"
dm_users=${DM_USERS:-2000}
read -r -a fanout_rates <<<"${FANOUT_RATES:-100 300}"
fanout_rates+=(saturated)
idle_connections=${IDLE_CONNECTIONS:-15000}
out=${COMPARE_OUT:-bench/results/compare-$(date -u +%Y-%m-%d)}
work=${COMPARE_WORK:-$(mktemp -d)}
results_md=${COMPARE_RESULTS_MD-bench/RESULTS.md}
mkdir -p "$out/runs" "$work"
export RUST_LIB_BACKTRACE=0

echo "== building chatgw and chatgw-peer (release)" >&2
cargo build --release -p chatgw -p chatgw-bench --bin chatgw --bin chatgw-peer >&2
bin=target/release/chatgw
peer=target/release/chatgw-peer
if ! command -v nats-server >/dev/null; then
    echo "== installing nats-server (Debian's package)" >&2
    if [ "$(id -u)" -eq 0 ]; then apt-get install -y nats-server >&2; else sudo apt-get install -y nats-server >&2; fi
fi

chatgw_addr=127.0.0.1:${CHATGW_PORT:-18180}
peer_addr=127.0.0.1:${PEER_PORT:-18190}
nats_ws_addr=127.0.0.1:${NATS_WS_PORT:-18223}
# One signing secret for every peer process of this work dir: the accounts
# made against the first stay valid against the next.
[ -s "$work/peer-secret" ] || echo "compare-$(date +%s)-$$-$RANDOM" >"$work/peer-secret"
peer_secret=$(cat "$work/peer-secret")
server_pid=

stop_server() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=
    fi
}
trap stop_server EXIT

wait_ready() { # name url-or-port
    for _ in $(seq 200); do
        if [ "$1" = nats ]; then
            (exec 3<>"/dev/tcp/${nats_ws_addr%:*}/${nats_ws_addr#*:}") 2>/dev/null && return 0
        else
            curl -fs "http://$2/readyz" >/dev/null 2>&1 && return 0
        fi
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.1
    done
    echo "$1 did not become ready; see $work/$1.log" >&2
    exit 1
}

# A fresh server of kind $1; sets server_pid and addr.
start_server() {
    stop_server
    case $1 in
    chatgw)
        # The load generator is one client on one address: the per-address
        # and per-user caps are off; durability stays the default (wal).
        "$bin" serve --listen "$chatgw_addr" --data-dir "$work/chatgw-data" --rate-limit 0 \
            --max-channel-members 1000 --max-connections-per-ip 0 --max-new-connections-per-ip-per-s 0 \
            --max-signups-per-ip-per-min 0 --channel-changes-per-min 0 >>"$work/chatgw.log" 2>&1 &
        server_pid=$!
        addr=$chatgw_addr
        ;;
    peer)
        # An 8 KiB read buffer per connection, as a careful operator would
        # set it (tungstenite's default is 128 KiB).
        "$peer" --listen "$peer_addr" --jwt-secret "$peer_secret" --read-buffer-bytes 8192 >>"$work/peer.log" 2>&1 &
        server_pid=$!
        addr=$peer_addr
        ;;
    nats)
        printf 'listen: 127.0.0.1:%s\nwebsocket { listen: "%s", no_tls: true }\n' \
            "${NATS_PORT:-18222}" "$nats_ws_addr" >"$work/nats.conf"
        nats-server -c "$work/nats.conf" >>"$work/nats.log" 2>&1 &
        server_pid=$!
        addr=$nats_ws_addr
        ;;
    esac
    wait_ready "$1" "$addr"
}

users_file() { echo "$work/users-$1.json"; }
target_of() { [ "$1" = nats ] && echo nats || echo chatgw; }

# Accounts first (signup hashes passwords), then fresh servers measure:
# freed hashing memory must not absorb what they measure.
accounts=$((dm_users > 1500 ? dm_users : 1500))
for server in "${servers[@]}"; do
    [ "$server" = nats ] && continue
    start_server "$server"
    echo "== $server: signing up $accounts accounts" >&2
    "$bin" loadgen idle --addr "$addr" --connections 1 --users "$accounts" --users-file "$(users_file "$server")" \
        --hold-s 0 --server-pid "$server_pid" >/dev/null
done
stop_server

# The servers in round $1's order: each round starts one further along.
order() {
    local n=${#servers[@]} shift=$(($1 % ${#servers[@]}))
    for i in $(seq 0 $((n - 1))); do echo "${servers[$(((i + shift) % n))]}"; done
}

# One run: scenario $1, setting $2, server $3, round $4, then the loadgen's
# flags. Keeps the report as runs/SCENARIO__SETTING__SERVER__rROUND.json.
run() {
    local scenario=$1 setting=$2 server=$3 round=$4
    shift 4
    local name="${scenario}__${setting}__${server}__r${round}"
    start_server "$server"
    echo "== $name" >&2
    if ! "$bin" loadgen "$scenario" --target "$(target_of "$server")" --addr "$addr" --server-pid "$server_pid" \
        --json "$@" >"$out/runs/$name.json" 2>"$work/$name.err"; then
        echo "   $name: the load generator reported a failure (kept in the report):" >&2
        tail -n 3 "$work/$name.err" | sed 's/^/   /' >&2
        echo "$name: $(tail -n 1 "$work/$name.err")" >>"$out/failures.txt"
    fi
    # The run's own charts: the report draws the comparisons.
    rm -f "$out/runs/$name/latency.png" "$out/runs/$name/latency.svg"
    # A server that died is a finding, not a retry.
    kill -0 "$server_pid" 2>/dev/null || echo "$name: the server exited during the run" >>"$out/failures.txt"
    stop_server
}

: >"$out/failures.txt"
for round in $(seq "$rounds"); do
    for scenario in "${scenarios[@]}"; do
        for server in $(order "$round"); do
            case $scenario in
            dm)
                for rate in "${dm_rates[@]}"; do
                    run dm "$rate" "$server" "$round" --users "$dm_users" --rate "$rate" --duration-s "$seconds" \
                        --workers 1 --users-file "$(users_file "$server")" \
                        --out "$out/runs/dm__${rate}__${server}__r${round}"
                done
                ;;
            fanout)
                for rate in "${fanout_rates[@]}"; do
                    pacing=()
                    # Each of the 10 senders takes a tenth of the rate.
                    [ "$rate" != saturated ] && pacing=(--sends-per-s "$(python3 -c "print($rate / 10)")")
                    # Saturated is closed loop: a wider window, so that the
                    # machine, not the messages in flight, sets the rate.
                    window=${FANOUT_WINDOW:-16}
                    [ "$rate" = saturated ] && window=${FANOUT_SATURATED_WINDOW:-64}
                    run fanout "$rate" "$server" "$round" --groups 10 --members 100 --window "$window" "${pacing[@]}" \
                        --duration-s "$seconds" --workers 1 --users-file "$(users_file "$server")" \
                        --out "$out/runs/fanout__${rate}__${server}__r${round}"
                done
                ;;
            idle)
                run idle "$idle_connections" "$server" "$round" --connections "$idle_connections" --users 1500 \
                    --connect-threads 8 --hold-s 12 --users-file "$(users_file "$server")"
                ;;
            *)
                echo "unknown scenario $scenario (dm, fanout, idle)" >&2
                exit 2
                ;;
            esac
        done
    done
done

python3 - "$out/meta.json" "$rounds" "$seconds" "$*" "${scenarios[*]}" <<'PY'
import json, os, platform, subprocess, sys, datetime
def first_line(command):
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
    except Exception as error:  # a missing tool is a blank, not a failure
        return f"unknown ({error})"
model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "unknown")
meta = {
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    "cores": os.cpu_count(),
    "cpu": model,
    "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    "kernel": platform.release(),
    "nats_server": first_line(["nats-server", "--version"]),
    "rustc": first_line(["rustc", "--version"]),
    "commit": first_line(["git", "describe", "--always", "--dirty"]),
    "rounds": int(sys.argv[2]),
    "seconds": int(sys.argv[3]),
    "command": "bash bench/compare.sh " + sys.argv[4],
    "env": {key: value for key, value in os.environ.items() if key.startswith(("COMPARE_", "DM_", "FANOUT_", "IDLE_")) and key != "COMPARE_WORK"},
    "scenarios": sys.argv[5].split(),
}
# A run of some scenarios into a folder that holds others keeps the earlier
# runs' records: the report names every invocation its figures came from.
earlier = []
if os.path.exists(sys.argv[1]):
    before = json.load(open(sys.argv[1]))
    for run in before.get("invocations", [before]):
        run.pop("invocations", None)
        run["scenarios"] = [scenario for scenario in run.get("scenarios", []) if scenario not in meta["scenarios"]]
        if run["scenarios"]:
            earlier.append(run)
meta["invocations"] = earlier + [dict(meta)]
json.dump(meta, open(sys.argv[1], "w"), indent=1)
PY
python3 bench/scripts/compare_report.py "$out" --bin "$bin" ${results_md:+--results-md "$results_md"}
echo "results in $out" >&2
