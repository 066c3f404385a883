#!/usr/bin/env python3
"""Plots messages/s against concurrency for Moat and Postfix from compare.sh's JSON reports.

    python3 bench/plot.py RESULTS_DIR OUT.png
"""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

results, out = sys.argv[1], sys.argv[2]
series = {}
for name in sorted(os.listdir(results)):
    if not name.endswith(".json"):
        continue
    r = json.load(open(os.path.join(results, name)))
    server = name.split("-", 1)[0]
    key = (server, r["mode"], r["messages_per_connection"])
    series.setdefault(key, []).append((r["concurrency"], r["messages_per_second"]))
fig, ax = plt.subplots(figsize=(7, 4.5))
for (server, mode, per_conn), points in sorted(series.items()):
    points.sort()
    xs, ys = zip(*points)
    ax.plot(xs, ys, marker="o", label=f"{server} ({mode}, {per_conn} msg/conn)")
ax.set_xscale("log", base=2)
ax.set_xlabel("concurrent clients")
ax.set_ylabel("messages accepted per second")
ax.set_title("Moat edge vs Postfix 3.7, server pinned to one core")
ax.grid(True, alpha=0.3)
ax.legend()
fig.tight_layout()
fig.savefig(out, dpi=120)
print(f"wrote {out}")
