#!/usr/bin/env python3
"""Tests of compare_report.py on a results folder written here: medians
and spreads, the ratio verdicts, the losses section, client-bound and stall
flags, and the model's arithmetic.

    python3 bench/scripts/test_compare_report.py
"""

import json
import os
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import compare_report  # noqa: E402


def cpu(server_s, loadgen_s, wall=10.0, cores=2):
    return {
        "wall_s": wall,
        "cores": cores,
        "server_cpu_s": server_s,
        "loadgen_cpu_s": loadgen_s,
        "server_share": server_s / (wall * cores),
        "loadgen_share": loadgen_s / (wall * cores),
    }


def dm(delivered_per_s, p99, cpu_per_1000, loadgen_s=2.0, timeline=None):
    return {
        "scenario": "dm",
        "delivered_per_s": delivered_per_s,
        "delivery_latency": {"p50_ms": p99 / 4, "p99_ms": p99, "p999_ms": p99 * 2},
        "server_cpu_s_per_1000_delivered": cpu_per_1000,
        "cpu": cpu(4.0, loadgen_s),
        "send_lag": {"p99_ms": 0.1},
        "timeline": timeline or [],
        "lost": 0,
        "errors": {},
    }


def fanout(deliveries_per_s, cpu_per_1000):
    return {
        "scenario": "fanout",
        "deliveries_per_s": deliveries_per_s,
        "delivery_latency": {"p50_ms": 1.0, "p99_ms": 3.0},
        "server_cpu_s_per_1000_delivered": cpu_per_1000,
        "cpu": cpu(8.0, 3.0),
    }


def idle(rss, kernel, ping_cpu):
    return {
        "scenario": "idle",
        "server_rss_per_connection_bytes": rss,
        "kernel_per_connection_bytes": kernel,
        "handshakes_per_s": 4000,
        "server_cpu_s_per_1000_handshakes": 0.2,
        "server_cpu_s_per_1000_pings": ping_cpu,
        "ramp_cpu": cpu(1.0, 1.0),
    }


class CompareReportTest(unittest.TestCase):
    def setUp(self):
        self.folder = tempfile.mkdtemp()
        os.makedirs(os.path.join(self.folder, "runs"))
        # chatgw: 3 rounds of 1:1 at 1,000 msg/s; the peer: 3 rounds.
        self.write("dm__1000__chatgw__r1", dm(1000, 2.0, 0.30))
        self.write("dm__1000__chatgw__r2", dm(1000, 4.0, 0.20))
        self.write("dm__1000__chatgw__r3", dm(1000, 3.0, 0.25, loadgen_s=9.5))
        self.write("dm__1000__peer__r1", dm(1000, 6.0, 0.10))
        self.write("dm__1000__peer__r2", dm(1000, 6.0, 0.10))
        stall = [{"second": s, "p99_ms": 1.0} for s in range(9)] + [{"second": 9, "p99_ms": 40.0}]
        self.write("dm__1000__peer__r3", dm(1000, 6.0, 0.10, timeline=stall))
        for round_ in (1, 2):
            self.write(f"fanout__300__chatgw__r{round_}", fanout(30000, 0.02))
            self.write(f"fanout__300__peer__r{round_}", fanout(30000, 0.02))
            self.write(f"idle__15000__chatgw__r{round_}", idle(2048, 4096, 0.05))
            self.write(f"idle__15000__peer__r{round_}", idle(10240, 4096, 0.05))

    def write(self, name, report):
        with open(os.path.join(self.folder, "runs", name + ".json"), "w") as out:
            out.write("a line the load generator printed first\n" + json.dumps(report) + "\n")

    def test_medians_ratios_losses_and_flags(self):
        runs = compare_report.load_runs(self.folder)
        self.assertEqual(len(runs[("dm", "1000", "chatgw")]), 3)
        lines, losses, notes = [], [], []
        compare_report.scenario_section(self.folder, None, "dm", runs, ["chatgw", "peer"], lines, losses, notes)
        text = "\n".join(lines)
        self.assertIn("| p99 ms | 3.000 (2.000 to 4.000) | 6.000 (6.000 to 6.000) |", text)
        self.assertIn("| p99 ms | 0.50x (chatgw better) |", text)
        self.assertIn("| delivered/s | 1.00x (even) |", text)
        self.assertEqual(losses, ["dm 1000, server CPU s / 1k delivered: chatgw 2.50x of tokio peer"])
        self.assertTrue(any("chatgw round 3: load generator at 95% of a core" in note for note in notes), notes)
        self.assertTrue(any("tokio peer round 3: a stall, second 9 p99 40.0 ms" in note for note in notes), notes)

    def test_the_model_shows_its_arithmetic_from_the_medians(self):
        runs = compare_report.load_runs(self.folder)
        lines = []
        compare_report.model(runs, lines)
        text = "\n".join(lines)
        # 1,000,000 × 2 KiB = 1.9 GiB; the kernel's 4 KiB for both ends is 2 KiB an end.
        self.assertIn("| user-space memory | 1,000,000 × 2.00 KiB | 1.9 GiB |", text)
        self.assertIn("| kernel socket memory | 1,000,000 × 2.00 KiB | 1.9 GiB |", text)
        # 11,111 1:1 messages/s × 0.25 s per 1,000 = 2.78 cores.
        self.assertIn("| cores for 1:1 | 11,111 × 0.2500 / 1,000 | 2.78 |", text)
        # 555,556 group deliveries/s × 0.02 s per 1,000 = 11.11 cores.
        self.assertIn("| cores for groups | 555,556 × 0.0200 / 1,000 | 11.11 |", text)
        # Heartbeats at the measured ping cost: 66,667 × 0.05 / 1,000 = 3.33.
        self.assertIn("| cores for heartbeats | 66,667 × 0.0500 / 1,000 (a WebSocket ping", text)
        self.assertIn("| cores in all | | 17.2 of 32 |", text)

    def test_the_whole_report_and_results_md_are_written(self):
        results_md = os.path.join(self.folder, "RESULTS.md")
        done = subprocess.run(
            [sys.executable, os.path.join(HERE, "compare_report.py"), self.folder, "--bin", "", "--results-md", results_md],
            capture_output=True,
            text=True,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        summary = open(os.path.join(self.folder, "summary.md")).read()
        self.assertIn("## Where chatgw loses", summary)
        self.assertIn("## One million connections", summary)
        self.assertTrue(open(results_md).read().startswith("<!-- Written by bench/scripts/compare_report.py"))


if __name__ == "__main__":
    unittest.main()
