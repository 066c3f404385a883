#!/usr/bin/env python3
"""A regression test for what the chaos test found about a frozen (SIGSTOPped) control node: a process
that hangs without closing its sockets, as a stalled disk or a paused VM does.

3 control nodes; node 1, the first address of every --endpoint/--control list, is frozen while
nodes 2 and 3 keep a quorum and a leader. Then:
  (a) `moat admin connector create` with --endpoint node1,node2,node3 must be acknowledged
      within 10 s (the same write with node 1 last is acknowledged at once);
  (b) an edge started with --control node1,node2,node3 must get a policy snapshot within 10 s.
Exits 1 if either does not happen. Uses the built binary like chaos.py (MOAT_BIN overrides).

    python3 tests/chaos/frozen_node.py
"""

import os
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True  # no __pycache__ beside the test
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import chaos as C  # noqa: E402


def main():
    d = tempfile.mkdtemp(prefix="moat-repro-frozen-")
    sink = C.Sink()
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    cl = C.Cluster(d, sink)
    bad = []
    try:
        for n in cl.nodes:
            n.start()
        if not C.wait_until(lambda: cl.leader() or None, 60):
            sys.exit("no leader")
        # The seeded tenant exists once a write on it is accepted (a new name per attempt: an
        # attempt that committed but timed out must not make the next one a duplicate).
        attempt = iter(range(1000))
        if not C.wait_until(lambda: cl.admin(["connector", "create", "--tenant", "example.test",
                                              f"warm-{next(attempt)}", "--type", "partner",
                                              "--sender-ip", "192.0.2.1/32"])[0] == 0, 60):
            sys.exit("the seeded tenant never appeared")
        node1 = cl.nodes[0]
        node1.freeze()
        print(f"node 1 ({node1.address}) frozen with SIGSTOP; waiting for nodes 2 and 3 to agree on a leader")

        def settled():
            seen = [((n.readyz()[1] or {}).get("raft") or {}).get("leader") for n in cl.nodes[1:]]
            return seen if seen[0] in (2, 3) and seen[0] == seen[1] else None
        leaders = C.wait_until(settled, 60)
        if not leaders:
            sys.exit("nodes 2 and 3 never agreed on a leader without node 1")
        print("leader seen by node 2 and 3:", leaders)

        t = time.monotonic()
        code, out, err = cl.admin(["connector", "create", "--tenant", "example.test", "a",
                                   "--type", "partner", "--sender-ip", "192.0.2.2/32"], timeout=60)
        took = time.monotonic() - t
        print(f"(a) admin write, node 1 first: exit {code} after {took:.1f}s {(out + err).strip()[-200:]}")
        if code != 0 or took > 10:
            bad.append(f"admin write with a frozen first endpoint: exit {code} after {took:.1f}s")
        ep = ",".join(n.address for n in cl.nodes[1:] + cl.nodes[:1])
        t = time.monotonic()
        code, _, _ = cl.admin(["connector", "create", "--tenant", "example.test", "b",
                               "--type", "partner", "--sender-ip", "192.0.2.3/32"], endpoint=ep)
        print(f"    same write, node 1 last: exit {code} after {time.monotonic() - t:.1f}s")

        e = cl.edges[0]
        e.argv = lambda: [C.MOAT, "edge", "--config", e.config, "--control",
                          ",".join(n.address for n in cl.nodes), "--status", e.status]
        _, listening = cl.start_edge(e)
        if not listening:
            bad.append("the edge did not start: " + "\n    ".join(e.log_tail(15)))
        t = time.monotonic()
        # The bug this guards against left the edge without a snapshot for good; a loaded
        # machine may take a while (3 s are spent on node 1 first).
        got = C.wait_until(lambda: (e.readyz()[1] or {}).get("policy", {}).get("version"), 30, 0.2)
        print(f"(b) edge with node 1 first in --control: "
              + (f"snapshot version {got} after {time.monotonic() - t:.1f}s" if got else
                 f"no snapshot after 30 s: {e.readyz()[1]}"))
        if not got:
            bad.append("an edge started with a frozen first control node got no snapshot in 30 s; its log:\n    "
                       + "\n    ".join(e.log_tail(15)))
        node1.thaw()
    finally:
        cl.kill_all()
        sink.shutdown()
    if bad:
        print("REPRODUCED:\n  - " + "\n  - ".join(bad) + f"\nlogs in {d}")
        return 1
    print("not reproduced: both went around the frozen node")
    return 0


if __name__ == "__main__":
    sys.exit(main())
