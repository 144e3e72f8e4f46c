#!/usr/bin/env bash
# Where a server's CPU goes on a 1:1 load: `perf record` of chatgw or the
# tokio peer while `chatgw loadgen dm` runs, then the samples summed by
# kind (kernel, RocksDB, allocator, glommio, chatgw, JSON, ...) and the
# top symbols. docs/performance.md quotes what this prints.
#
#   bash bench/scripts/profile.sh                      # chatgw, 1,000 msg/s
#   PROFILE_SERVER=peer bash bench/scripts/profile.sh  # the tokio peer
#
# Environment: PROFILE_SERVER (chatgw or peer), PROFILE_RATE (1000 msg/s),
# PROFILE_USERS (2000), PROFILE_SECONDS (8 s recorded, after 4 s of load),
# PROFILE_OUT (where perf.data and the summary go; a temp dir otherwise).
#
# perf samples on-CPU time only (cpu-clock at 2,000 Hz per thread), so the
# sample counts of two servers compare as CPU time; the kinds come from
# symbol names, and RocksDB's frames have no frame pointers: read them by
# self time, not by caller.
set -euo pipefail
cd "$(dirname "$0")/../.."

server=${PROFILE_SERVER:-chatgw}
rate=${PROFILE_RATE:-1000}
users=${PROFILE_USERS:-2000}
seconds=${PROFILE_SECONDS:-8}
command -v perf >/dev/null || { echo "profile needs perf (apt-get install linux-perf)" >&2; exit 1; }
cargo build --release -p chatgw -p chatgw-bench --bin chatgw --bin chatgw-peer >&2
bin=target/release/chatgw
addr=127.0.0.1:${PROFILE_PORT:-18390}
out=${PROFILE_OUT:-$(mktemp -d)}
mkdir -p "$out"
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

case $server in
chatgw)
    "$bin" serve --listen "$addr" --data-dir "$work/data" --rate-limit 0 --max-connections-per-ip 0 \
        --max-new-connections-per-ip-per-s 0 --max-signups-per-ip-per-min 0 --channel-changes-per-min 0 \
        >>"$work/server.log" 2>&1 &
    ;;
peer)
    target/release/chatgw-peer --listen "$addr" --jwt-secret "profile-$$-secret-0123456789" \
        --read-buffer-bytes 8192 >>"$work/server.log" 2>&1 &
    ;;
*) echo "PROFILE_SERVER is chatgw or peer" >&2; exit 2 ;;
esac
server_pid=$!
for _ in $(seq 200); do
    curl -fs "http://$addr/readyz" >/dev/null 2>&1 && break
    sleep 0.1
done
# The accounts first (signups are not what is measured).
"$bin" loadgen idle --addr "$addr" --connections 1 --users "$users" --users-file "$work/users.json" \
    --hold-s 0 --server-pid "$server_pid" >/dev/null 2>&1
"$bin" loadgen dm --addr "$addr" --server-pid "$server_pid" --users "$users" --rate "$rate" \
    --duration-s $((seconds + 6)) --workers 1 --users-file "$work/users.json" --json >"$out/dm.json" 2>"$work/dm.err" &
load=$!
sleep 4
perf record -F 2000 -g -p "$server_pid" -o "$out/perf.data" -- sleep "$seconds" >/dev/null 2>&1
wait "$load"
stop_server
perf report -i "$out/perf.data" --no-children --sort dso,sym -g none 2>/dev/null | grep -v '^#' | grep -v '^$' \
    >"$out/symbols.txt"
samples=$(perf script -i "$out/perf.data" -F comm 2>/dev/null | wc -l)
python3 - "$out/symbols.txt" "$samples" "$rate" "$seconds" "$server" <<'PY'
import collections, re, sys
path, samples, rate, seconds, server = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
kinds = collections.Counter()
for line in open(path):
    m = re.match(r'\s*([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.*)', line)
    if not m:
        continue
    share, dso, _, sym = float(m[1]), m[2], m[3], m[4]
    if 'rocksdb' in sym or 'libstdc' in dso:
        kind = 'RocksDB'
    elif dso.startswith('[kernel'):
        kind = 'kernel'
    elif re.search(r'malloc|free|_int_|unlink_chunk|consolidate|__rdl_|__rust_(alloc|dealloc)', sym):
        kind = 'allocator'
    elif sym.startswith(('glommio', '<glommio')) or 'io_uring' in sym:
        kind = 'glommio and liburing'
    elif sym.startswith(('tokio', '<tokio')) or 'tokio::' in sym:
        kind = 'tokio'
    elif 'serde' in sym:
        kind = 'JSON'
    elif 'tungstenite' in sym:
        kind = 'tungstenite'
    elif 'chatgw' in sym:
        kind = 'chatgw'
    elif 'libc' in dso:
        kind = 'libc (copies, system call stubs)'
    else:
        kind = 'other'
    kinds[kind] += share
# Samples at 2,000 Hz of on-CPU time: 0.5 ms each.
cpu_ms = samples * 0.5
per_message_us = cpu_ms * 1000 / (rate * seconds)
print(f"{server} at {rate} msg/s: {samples} samples in {seconds} s = {cpu_ms / seconds / 10:.1f}% of a core, "
      f"{per_message_us:.0f} us of CPU a message")
for kind, share in kinds.most_common():
    print(f"  {kind:34} {share:5.1f}%  {per_message_us * share / 100:6.1f} us a message")
PY
echo "top symbols:"
head -15 "$out/symbols.txt"
echo "(perf.data and symbols.txt in $out)"
