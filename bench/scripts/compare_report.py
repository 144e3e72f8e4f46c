#!/usr/bin/env python3
"""The comparison's report, from what bench/compare.sh kept in a results
folder (runs/*.json, meta.json, failures.txt): summary.md with the medians
and spreads per server, the ratio tables (chatgw over each peer), one
latency-by-percentile plot per scenario and setting (drawn by `chatgw
report` from the median round's histograms), the one-million-connection
model, and bench/RESULTS.md (the same, regenerated, never typed by hand).

    python3 bench/scripts/compare_report.py RESULTS_DIR [--bin target/release/chatgw] [--results-md bench/RESULTS.md]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections import defaultdict

NAMES = {"chatgw": "chatgw", "nats": "nats-server", "peer": "tokio peer"}
PERSISTENCE = {
    "chatgw": "RocksDB, WAL before each ack (default durability)",
    "nats": "none (core NATS, no JetStream)",
    "peer": "in memory only (run with an 8 KiB read buffer per connection; tungstenite's default is 128 KiB)",
}


def load_runs(folder):
    """Reports by (scenario, setting, server), each a list of (round, report)."""
    runs = defaultdict(list)
    for name in sorted(os.listdir(os.path.join(folder, "runs"))):
        if not name.endswith(".json"):
            continue
        scenario, setting, server, round_ = name[: -len(".json")].split("__")
        path = os.path.join(folder, "runs", name)
        text = open(path).read().strip()
        if not text:
            continue  # the run printed nothing: its failure is in failures.txt
        try:
            report = json.loads(text.splitlines()[-1])
        except json.JSONDecodeError:
            continue
        runs[(scenario, setting, server)].append((int(round_[1:]), report))
    return runs


def dig(report, *path):
    value = report
    for key in path:
        if not isinstance(value, dict) or value.get(key) is None:
            return None
        value = value[key]
    return value


# What each scenario reports: (label, path in the report, unit, higher is better).
FIGURES = {
    "dm": [
        ("delivered/s", ("delivered_per_s",), "{:,.0f}", True),
        ("p50 ms", ("delivery_latency", "p50_ms"), "{:.3f}", False),
        ("p99 ms", ("delivery_latency", "p99_ms"), "{:.3f}", False),
        ("p99.9 ms", ("delivery_latency", "p999_ms"), "{:.3f}", False),
        ("server CPU s / 1k delivered", ("server_cpu_s_per_1000_delivered",), "{:.4f}", False),
        ("server CPU share", ("cpu", "server_share"), "{:.0%}", None),
        ("loadgen CPU share", ("cpu", "loadgen_share"), "{:.0%}", None),
        # chatgw's own counters (chatgw_mesh_messages_total over stored
        # messages, measured phase only); the others have no cores to cross.
        ("cross-core messages / stored message", ("server_mesh_messages_per_message",), "{:.2f}", None),
    ],
    "fanout": [
        ("deliveries/s", ("deliveries_per_s",), "{:,.0f}", True),
        ("p50 ms", ("delivery_latency", "p50_ms"), "{:.3f}", False),
        ("p99 ms", ("delivery_latency", "p99_ms"), "{:.3f}", False),
        ("server CPU s / 1k delivered", ("server_cpu_s_per_1000_delivered",), "{:.4f}", False),
        ("server CPU share", ("cpu", "server_share"), "{:.0%}", None),
        ("loadgen CPU share", ("cpu", "loadgen_share"), "{:.0%}", None),
    ],
    "idle": [
        ("RSS KiB / connection", ("server_rss_per_connection_bytes",), "{:.2f}", False, 1 / 1024),
        ("kernel KiB / connection (both ends)", ("kernel_per_connection_bytes",), "{:.2f}", False, 1 / 1024),
        ("handshakes/s", ("handshakes_per_s",), "{:,.0f}", True),
        ("server CPU s / 1k handshakes", ("server_cpu_s_per_1000_handshakes",), "{:.4f}", False),
        ("server CPU s / 1k pings (hold)", ("server_cpu_s_per_1000_pings",), "{:.4f}", False),
        ("loadgen CPU share (ramp)", ("ramp_cpu", "loadgen_share"), "{:.0%}", None),
    ],
}

SCENARIO_TITLES = {
    "dm": "1:1 messages, open loop, offered rate (msg/s)",
    "fanout": "100-member groups (10 of them), offered rate (msg/s over all groups) or saturated",
    "idle": "idle connections (their ramp gives handshakes/s)",
}


def values_at(reports, path, scale=1):
    """The rounds' numbers at `path`, scaled (rounds without one left out)."""
    values = [dig(report, *path) for _, report in reports]
    return [value * scale for value in values if isinstance(value, (int, float))]


def figure_values(reports, spec):
    return values_at(reports, spec[1], spec[4] if len(spec) > 4 else 1)


def median_spread(values, fmt):
    if not values:
        return "n/a"
    median = statistics.median(values)
    text = fmt.format(median)
    if len(values) > 1:
        text += f" ({fmt.format(min(values))} to {fmt.format(max(values))})"
    return text


def sort_settings(settings):
    def key(setting):
        return (1, 0) if setting == "saturated" else (0, float(setting))
    return sorted(settings, key=key)


def median_round(reports, path):
    """The report whose figure at `path` is the median (for its histograms)."""
    ranked = sorted((dig(report, *path) or 0, round_) for round_, report in reports)
    return ranked[len(ranked) // 2][1] if ranked else None


def client_bound(report, setting=None):
    """Why a run may say more about the load generator than the server."""
    cpu = report.get("cpu") or report.get("ramp_cpu") or {}
    notes = []
    wall, loadgen = cpu.get("wall_s") or 0, cpu.get("loadgen_cpu_s") or 0
    if wall and loadgen / wall >= 0.9:
        notes.append(f"load generator at {loadgen / wall:.0%} of a core")
    if (cpu.get("server_share") or 0) + (cpu.get("loadgen_share") or 0) >= 0.95:
        notes.append("both cores busy")
    busy = (cpu.get("server_share") or 0) + (cpu.get("loadgen_share") or 0)
    if setting == "saturated" and report.get("window") and busy < 0.8:
        notes.append(
            f"window-bound: server and load generator used {busy:.0%} of the machine, so the {report['window']}"
            " messages in flight per sender set the rate"
        )
    lag = dig(report, "send_lag", "p99_ms")
    if lag is not None and lag > 5:
        notes.append(f"sends {lag:.0f} ms late at p99 (schedule slipped)")
    return notes


def stalls(report):
    """Seconds whose p99 stands far above the run's typical second."""
    timeline = report.get("timeline") or []
    p99s = [second.get("p99_ms") for second in timeline if second.get("p99_ms") is not None]
    if len(p99s) < 3:
        return []
    typical = statistics.median(p99s)
    return [
        f"second {second['second']} p99 {second['p99_ms']:.1f} ms against a typical {typical:.2f} ms"
        for second in timeline
        if second.get("p99_ms") is not None and second["p99_ms"] > max(10 * typical, typical + 20)
    ]


def plot(folder, chatgw_bin, scenario, setting, by_server, lines):
    """One latency-by-percentile chart of the median round per server."""
    files, names = [], []
    for server, reports in by_server.items():
        round_ = median_round(reports, ("delivery_latency", "p99_ms"))
        path = os.path.join(folder, "runs", f"{scenario}__{setting}__{server}__r{round_}", "delivery.hgrm")
        if round_ is not None and os.path.exists(path):
            files.append(path)
            names.append(f"{NAMES[server]} (round {round_})")
    if len(files) < 1 or not chatgw_bin:
        return None
    os.makedirs(os.path.join(folder, "plots"), exist_ok=True)
    prefix = os.path.join(folder, "plots", f"{scenario}-{setting}")
    title = f"{scenario} {setting}: delivery latency by percentile"
    command = [chatgw_bin, "report", *files, "--names", ",".join(names), "--plot", prefix, "--title", title]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        lines.append(f"(the plot of {scenario} {setting} failed: {done.stderr.strip()[:200]})")
        return None
    return os.path.relpath(prefix + ".svg", folder)


EVEN = 0.05


def ratio_cell(chatgw, other, higher_better):
    if not chatgw or not other:
        return "n/a"
    if not statistics.median(other):
        return "n/a"
    ratio = statistics.median(chatgw) / statistics.median(other)
    if higher_better is None:
        return f"{ratio:.2f}x"
    # Within 5% either way is even: rounds on these cores spread wider.
    if abs(ratio - 1) <= EVEN:
        return f"{ratio:.2f}x (even)"
    wins = ratio > 1 if higher_better else ratio < 1
    return f"{ratio:.2f}x ({'chatgw better' if wins else 'chatgw worse'})"


def scenario_section(folder, chatgw_bin, scenario, runs, servers, lines, losses, notes, wins=None):
    wins = [] if wins is None else wins
    settings = sort_settings({setting for (s, setting, _) in runs if s == scenario})
    if not settings:
        return
    lines.append(f"## {scenario}: {SCENARIO_TITLES[scenario]}")
    lines.append("")
    for setting in settings:
        by_server = {server: runs[(scenario, setting, server)] for server in servers if runs.get((scenario, setting, server))}
        if not by_server:
            continue
        lines.append(f"### {scenario} {setting}")
        lines.append("")
        present = list(by_server)
        lines.append("| figure | " + " | ".join(NAMES[server] for server in present) + " |")
        lines.append("|---|" + "---|" * len(present))
        for spec in FIGURES[scenario]:
            cells = [median_spread(figure_values(by_server[server], spec), spec[2]) for server in present]
            lines.append(f"| {spec[0]} | " + " | ".join(cells) + " |")
        lines.append("")
        if "chatgw" in by_server and len(present) > 1:
            others = [server for server in present if server != "chatgw"]
            lines.append("| ratio, chatgw over | " + " | ".join(NAMES[server] for server in others) + " |")
            lines.append("|---|" + "---|" * len(others))
            for spec in FIGURES[scenario]:
                if spec[3] is None:
                    continue
                chatgw = figure_values(by_server["chatgw"], spec)
                cells = [ratio_cell(chatgw, figure_values(by_server[server], spec), spec[3]) for server in others]
                lines.append(f"| {spec[0]} | " + " | ".join(cells) + " |")
                for server, cell in zip(others, cells):
                    verdict = f"{scenario} {setting}, {spec[0]}: chatgw {cell.split(' ')[0]} of {NAMES[server]}"
                    if "chatgw worse" in cell:
                        losses.append(verdict)
                    elif "chatgw better" in cell:
                        wins.append(verdict)
            lines.append("")
        if scenario != "idle":
            chart = plot(folder, chatgw_bin, scenario, setting, by_server, lines)
            if chart:
                lines.append(f"![{scenario} {setting}]({chart})")
                lines.append("")
        for server, reports in by_server.items():
            for round_, report in reports:
                for note in client_bound(report, setting):
                    notes.append(f"{scenario} {setting}, {NAMES[server]} round {round_}: {note}")
                for note in stalls(report):
                    notes.append(f"{scenario} {setting}, {NAMES[server]} round {round_}: a stall, {note}")
                lost = report.get("lost")
                errors = report.get("errors") or {}
                if lost or errors:
                    notes.append(
                        f"{scenario} {setting}, {NAMES[server]} round {round_}: lost {lost or 0}, errors {errors or '{}'}"
                    )


def med(runs, key, path, scale=1):
    values = values_at(runs.get(key, []), path, scale)
    return statistics.median(values) if values else None


def model(runs, lines):
    """One million connections on a 32-core, 128 GiB machine, from chatgw's
    measured medians."""
    idle_key = next((key for key in runs if key[0] == "idle" and key[2] == "chatgw"), None)
    dm_keys = sorted((key for key in runs if key[0] == "dm" and key[2] == "chatgw"), key=lambda key: float(key[1]))
    fanout_keys = [key for key in runs if key[0] == "fanout" and key[2] == "chatgw" and key[1] != "saturated"]
    saturated = ("fanout", "saturated", "chatgw")
    lines.append("## One million connections on one machine (a model from the figures above)")
    lines.append("")
    if not idle_key or not dm_keys or not fanout_keys:
        lines.append("Not enough chatgw figures in this run for the model (it needs idle, dm and fanout).")
        lines.append("")
        return
    rss = med(runs, idle_key, ("server_rss_per_connection_bytes",))
    kernel_both = med(runs, idle_key, ("kernel_per_connection_bytes",))
    # The measured dm rate closest to the model's 1:1 load per core, that
    # chatgw kept up with.
    kept = [key for key in dm_keys if (med(runs, key, ("delivered_per_s",)) or 0) >= 0.97 * float(key[1])]
    dm_key = (kept or dm_keys)[-1]
    fanout_key = max(fanout_keys, key=lambda key: float(key[1]))
    dm_cpu = med(runs, dm_key, ("server_cpu_s_per_1000_delivered",))
    fanout_cpu = med(runs, fanout_key, ("server_cpu_s_per_1000_delivered",))
    handshake_cpu = med(runs, idle_key, ("server_cpu_s_per_1000_handshakes",))
    ping_cpu = med(runs, idle_key, ("server_cpu_s_per_1000_pings",))
    sat_rate = med(runs, saturated, ("deliveries_per_s",))
    sat_share = med(runs, saturated, ("cpu", "server_share"))
    sat_cores = med(runs, saturated, ("cpu", "cores"))
    if None in (rss, kernel_both, dm_cpu, fanout_cpu):
        lines.append("Some of the model's inputs are missing from this run.")
        lines.append("")
        return
    users = 1_000_000
    per_min = 1
    messages = users * per_min / 60
    group_messages, direct_messages = messages / 3, messages * 2 / 3
    group_deliveries = group_messages * 100
    heartbeats = users / 15  # one frame per connection per heartbeat_ms (15 s)
    kernel_end = kernel_both / 2
    user_gib = users * rss / 2**30
    kernel_gib = users * kernel_end / 2**30
    # Messages in flight sit in socket buffers: a 1:1 text and its frames
    # are ~0.5 KiB; at most a second's deliveries are queued at once.
    buffer_gib = (group_deliveries + direct_messages * 2) * 512 / 2**30
    cores_direct = direct_messages * dm_cpu / 1000
    cores_group = group_deliveries * fanout_cpu / 1000
    heartbeat_cpu, heartbeat_basis = (
        (ping_cpu, "a WebSocket ping's cost on an idle connection, measured in the idle hold")
        if ping_cpu is not None
        else (dm_cpu, "a 1:1 message's cost: an upper bound")
    )
    cores_heartbeat = heartbeats * heartbeat_cpu / 1000
    cores_total = cores_direct + cores_group + cores_heartbeat
    lines += [
        "Traffic mix: 1,000,000 users, one connection each, 1 message per user per minute; a third of the messages",
        "go to 100-member groups, two thirds are 1:1; every connection sends a heartbeat every 15 s (`heartbeat_ms`).",
        "",
        "Measured inputs (chatgw medians of this run):",
        f"- user-space memory per idle connection: {rss / 1024:.2f} KiB (idle {idle_key[1]});",
        f"- kernel memory per connection, both loopback ends (slab plus TCP buffers): {kernel_both / 1024:.2f} KiB,"
        f" so {kernel_end / 1024:.2f} KiB for the server's end;",
        f"- server CPU per 1,000 1:1 messages delivered: {dm_cpu:.4f} s (dm {dm_key[1]} msg/s, each with its ack and"
        " the echo to the sending device);",
        f"- server CPU per 1,000 group deliveries: {fanout_cpu:.4f} s (fanout {fanout_key[1]} msg/s);",
    ]
    if handshake_cpu is not None:
        lines.append(f"- server CPU per 1,000 handshakes: {handshake_cpu:.4f} s;")
    if ping_cpu is not None:
        lines.append(f"- server CPU per 1,000 pings on idle connections (the whole hold, the idle server's own"
                     f" upkeep in it): {ping_cpu:.4f} s;")
    if sat_rate and sat_share and sat_cores:
        per_core = sat_rate / (sat_share * sat_cores)
        lines.append(f"- saturated fan-out: {sat_rate:,.0f} deliveries/s on {sat_share * sat_cores:.2f} cores,"
                     f" {per_core:,.0f} deliveries/s per core.")
    lines += [
        "",
        "| what | arithmetic | result |",
        "|---|---|---|",
        f"| messages/s | 1,000,000 × {per_min} / 60 | {messages:,.0f} |",
        f"| 1:1 messages/s | × 2/3 | {direct_messages:,.0f} |",
        f"| group deliveries/s | {group_messages:,.0f} × 100 | {group_deliveries:,.0f} |",
        f"| heartbeats/s | 1,000,000 / 15 | {heartbeats:,.0f} |",
        f"| user-space memory | 1,000,000 × {rss / 1024:.2f} KiB | {user_gib:.1f} GiB |",
        f"| kernel socket memory | 1,000,000 × {kernel_end / 1024:.2f} KiB | {kernel_gib:.1f} GiB |",
        f"| socket buffers in flight | ({group_deliveries:,.0f} + 2 × {direct_messages:,.0f}) × 0.5 KiB"
        f" (a second's frames) | {buffer_gib:.2f} GiB |",
        f"| memory in all | | {user_gib + kernel_gib + buffer_gib:.1f} GiB of 128 GiB |",
        f"| cores for 1:1 | {direct_messages:,.0f} × {dm_cpu:.4f} / 1,000 | {cores_direct:.2f} |",
        f"| cores for groups | {group_deliveries:,.0f} × {fanout_cpu:.4f} / 1,000 | {cores_group:.2f} |",
        f"| cores for heartbeats | {heartbeats:,.0f} × {heartbeat_cpu:.4f} / 1,000 ({heartbeat_basis})"
        f" | {cores_heartbeat:.2f} |",
        f"| cores in all | | {cores_total:.1f} of 32 |",
        "",
        f"So a 32-core, 128 GiB machine would hold the million connections in about "
        f"{user_gib + kernel_gib + buffer_gib:.0f} GiB and carry this mix on about {cores_total:.0f} cores"
        f" ({cores_total / 32:.0%} of them). Caveats: the per-message CPU was measured on {sat_cores or 'these'}"
        " cores shared with the load generator, and cross-core routing grows with the cores (fan-out is O(cores)"
        " per message); RSS counts memory glibc keeps after freeing it; the kernel figure is halved from both"
        " loopback ends, which are not the same (the client's end holds unread pongs); the kernel's"
        " `net.ipv4.tcp_mem`, `fs.nr_open` and the listen backlog must be raised for a million sockets.",
        "",
    ]


def invocation_text(run):
    """One invocation of compare.sh: its command, environment, date and scenarios."""
    env = " ".join(f"{key}={value}" for key, value in sorted(run.get("env", {}).items()))
    scenarios = ", ".join(run.get("scenarios", [])) or "every scenario"
    return (
        f"`{run.get('command', 'bash bench/compare.sh')}`"
        + (f" with {env}" if env else "")
        + f" ({scenarios}; {run.get('date', '?')}, commit {run.get('commit', '?')})"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--bin", default="target/release/chatgw", help="the chatgw binary, for its plots")
    parser.add_argument("--results-md", help="also write this (bench/RESULTS.md)")
    args = parser.parse_args()
    meta_path = os.path.join(args.folder, "meta.json")
    meta = json.load(open(meta_path)) if os.path.exists(meta_path) else {}
    runs = load_runs(args.folder)
    servers = [server for server in ("chatgw", "nats", "peer") if any(key[2] == server for key in runs)]
    lines, losses, notes, wins = [], [], [], []
    for scenario in ("dm", "fanout", "idle"):
        scenario_section(args.folder, args.bin, scenario, runs, servers, lines, losses, notes, wins)
    body = lines
    lines = []
    model(runs, lines)
    model_lines = lines
    failures_path = os.path.join(args.folder, "failures.txt")
    failures = [line.strip() for line in open(failures_path)] if os.path.exists(failures_path) else []
    failures = [line for line in failures if line]

    head = [
        "# chatgw beside nats-server and a tokio peer",
        "",
        f"Run on {meta.get('date', 'an unknown date')}, commit {meta.get('commit', '?')}:"
        f" {meta.get('cores', '?')} cores ({meta.get('cpu', '?')}), {meta.get('memory_gib', '?')} GiB, Linux"
        f" {meta.get('kernel', '?')}; {meta.get('nats_server', 'nats-server')}; {meta.get('rustc', '')}.",
        "",
        "Commands: "
        + "; ".join(invocation_text(run) for run in meta.get("invocations", [meta]))
        + f". Each figure is the median of {meta.get('rounds', '?')} rounds, the servers' order rotating from round"
        f" to round, with the spread (lowest to highest) in parentheses; {meta.get('seconds', '?')} s of measured"
        " load per run, a fresh server each run. CPU is read from /proc over the measured phase only (setup,"
        " signup and connecting excluded); a share is of all cores' time.",
        "",
        "What each server keeps: "
        + "; ".join(f"**{NAMES[server]}**: {PERSISTENCE[server]}" for server in servers)
        + ". chatgw acks a send only once it is in RocksDB's write-ahead log and echoes every message to the"
        " sending device too (three frames a 1:1 message: the echo, the delivery, the ack); nats-server stores"
        " nothing and its ack is the `PONG` to a `PING` after the `PUB` (two frames); the tokio peer writes the"
        " same frames as chatgw but keeps history in memory. The load generator shares the cores with the server."
        " docs/benchmarking.md says how each figure is measured and what the criterion benches show of where"
        " chatgw's time goes (a round trip between cores costs 93 µs there, most of it parking and waking).",
        "",
        "## Where chatgw loses",
        "",
    ]
    head += [f"- {loss}" for loss in losses] or ["- nowhere in this run."]
    head += ["", "## Where chatgw wins", ""]
    head += [f"- {win}" for win in wins] or ["- nowhere in this run."]
    head.append("")
    tail = ["## Caveats seen in this run", ""]
    tail += [f"- {note}" for note in notes] or ["- none flagged (no client-bound run, stall, loss or error)."]
    tail += [f"- failed run: {failure}" for failure in failures]
    tail.append("")
    text = "\n".join(head + body + model_lines + tail)
    open(os.path.join(args.folder, "summary.md"), "w").write(text)
    if args.results_md:
        folder = os.path.relpath(args.folder, os.path.dirname(os.path.abspath(args.results_md)) or ".")
        generated = [
            "<!-- Written by bench/scripts/compare_report.py from the results folder below: do not edit by hand;",
            "     rerun `bash bench/compare.sh` to regenerate. -->",
            "",
        ]
        # Plot links are relative to the results folder: make them relative to RESULTS.md.
        body_text = text.replace("](plots/", f"]({folder}/plots/")
        open(args.results_md, "w").write("\n".join(generated) + body_text + f"\nResults folder: `{folder}`.\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
