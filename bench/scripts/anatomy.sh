#!/usr/bin/env bash
# What one 1:1 message and one handshake cost a server, counted on this
# machine: system calls by name (strace -c), context switches (perf stat),
# and for chatgw its cross-core messages per stored message (its own
# counters). docs/performance.md quotes what this prints.
#
#   bash bench/scripts/anatomy.sh               # chatgw, 2,000 msg/s
#   ANATOMY_SERVER=peer bash bench/scripts/anatomy.sh   # the tokio peer
#
# Environment: ANATOMY_SERVER (chatgw or peer), ANATOMY_RATE (2000 msg/s:
# low enough that the server keeps up while traced), ANATOMY_USERS (2000),
# ANATOMY_SECONDS (4 s traced), ANATOMY_HANDSHAKES (3000), CHATGW_ARGS
# (more flags for chatgw serve, e.g. "--hand-off false").
#
# A traced server is slower: the counts per message hold, the times do not
# (the CPU and latency figures are bench/compare.sh's, untraced).
set -euo pipefail
cd "$(dirname "$0")/../.."

server=${ANATOMY_SERVER:-chatgw}
rate=${ANATOMY_RATE:-2000}
users=${ANATOMY_USERS:-2000}
seconds=${ANATOMY_SECONDS:-4}
handshakes=${ANATOMY_HANDSHAKES:-3000}
read -r -a extra <<<"${CHATGW_ARGS:-}"
for tool in strace perf; do
    command -v "$tool" >/dev/null || { echo "anatomy needs $tool (apt-get install strace linux-perf)" >&2; exit 1; }
done
cargo build --release -p chatgw -p chatgw-bench --bin chatgw --bin chatgw-peer >&2
bin=target/release/chatgw
addr=127.0.0.1:${ANATOMY_PORT:-18380}
work=$(mktemp -d)
server_pid=
stop_server() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=
    fi
}
trap 'stop_server; rm -rf "$work"' EXIT

start_server() {
    stop_server
    case $server in
    chatgw)
        "$bin" serve --listen "$addr" --data-dir "$work/data" --rate-limit 0 --max-connections-per-ip 0 \
            --max-new-connections-per-ip-per-s 0 --max-signups-per-ip-per-min 0 --channel-changes-per-min 0 \
            "${extra[@]}" >>"$work/server.log" 2>&1 &
        ;;
    peer)
        target/release/chatgw-peer --listen "$addr" --jwt-secret "anatomy-$$-secret-0123456789" \
            --read-buffer-bytes 8192 >>"$work/server.log" 2>&1 &
        ;;
    *) echo "ANATOMY_SERVER is chatgw or peer" >&2; exit 2 ;;
    esac
    server_pid=$!
    for _ in $(seq 200); do
        curl -fs "http://$addr/readyz" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "the server did not start; see $work/server.log" >&2
    exit 1
}

stored() { # chatgw's messages stored so far (0 for the peer)
    [ "$server" = chatgw ] || { echo 0; return; }
    curl -fs "http://$addr/metrics" | awk '/^chatgw_messages_received_total/ { sum += $NF } END { print sum + 0 }'
}

# strace's summary as "calls name" lines, the busiest first.
calls() { awk '$1 ~ /^[0-9.]+$/ && NF >= 5 && $NF != "total" { print $4, $NF }' "$1" | sort -rn; }
# "name  calls per unit" for those at 0.01 or more a unit, then the sum of all.
per() { awk -v n="$1" '{ if ($1 / n >= 0.01) printf "  %-16s %6.2f\n", $2, $1 / n; total += $1 } END { printf "  %-16s %6.2f\n", "all", total / n }'; }

start_server
"$bin" loadgen idle --addr "$addr" --connections 1 --users "$users" --users-file "$work/users.json" --hold-s 0 \
    --server-pid "$server_pid" >/dev/null 2>&1
start_server

echo "== $server: one 1:1 message ($users users, $rate msg/s, $seconds s traced)"
"$bin" loadgen dm --addr "$addr" --users "$users" --rate "$rate" --duration-s $((seconds + 12)) --workers 1 \
    --users-file "$work/users.json" --json >"$work/dm.json" 2>"$work/dm.err" &
loadgen=$!
sleep 5
perf stat -e context-switches -p "$server_pid" -- sleep 3 2>"$work/perf.txt" >/dev/null
switches=$(awk '/context-switches/ { gsub(",", "", $1); print $1 }' "$work/perf.txt")
before=$(stored)
timeout -s INT "$seconds" strace -c -f -p "$server_pid" -o "$work/strace.txt" 2>/dev/null || true
after=$(stored)
wait "$loadgen" || { echo "the load generator failed:" >&2; tail -3 "$work/dm.err" >&2; }
offered=$((rate * seconds))
counted=$((after - before))
messages=$offered
[ "$counted" -gt 0 ] && messages=$counted
echo "context switches: $switches in 3 s untraced, $(python3 -c "print(f'{$switches / 3 / $rate:.2f}')") per message"
echo "system calls per message ($messages messages while traced$([ "$counted" -gt 0 ] && echo ", by the server's count" || echo ", as offered")):"
calls "$work/strace.txt" | per "$messages"
python3 - "$work/dm.json" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
per = report.get("server_mesh_messages_per_message")
if per is not None:
    print(f"cross-core messages: {per:.2f} per stored message (the whole run, by chatgw's counters)")
print(f"delivered {report['delivered']} of {report['sent']} sent")
PY

start_server
echo "== $server: one handshake ($handshakes connections, traced throughout)"
strace -c -f -p "$server_pid" -o "$work/strace-hs.txt" 2>/dev/null &
tracer=$!
sleep 1
"$bin" loadgen idle --addr "$addr" --connections "$handshakes" --users "$users" --users-file "$work/users.json" \
    --hold-s 0 --server-pid "$server_pid" >/dev/null
sleep 1
kill -INT "$tracer"
wait "$tracer" 2>/dev/null || true
echo "system calls per handshake (accept to hello, the close included):"
calls "$work/strace-hs.txt" | per "$handshakes"
