#!/usr/bin/env python3
"""A fake miner: it speaks stratum to a pool exactly as xmrig does on the wire
(the login line of xmrig's src/base/net/stratum/Client.cpp), takes one job and
submits one made-up share. It computes no hash and burns no CPU.

    fake_miner.py HOST PORT [--dialect xmrig|cpuminer] [--stay SECONDS]

Nothing in its argv says "miner": agentwatch has to recognise it by the first
bytes it writes on the socket.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time

WALLET = "4" + "8" * 94  # shaped like a 95-character Monero address; not a real one
AGENT = "XMRig/6.21.0 (Linux x86_64) libuv/1.44.2 gcc/12.2.0"


def first_line(dialect: str) -> bytes:
    if dialect == "cpuminer":
        # cpuminer util.c stratum_subscribe(): note the spaces after ':' and ','
        return b'{"id": 1, "method": "mining.subscribe", "params": ["cpuminer/2.5.1"]}\n'
    login = {"login": WALLET, "pass": "x", "agent": AGENT, "rigid": "", "algo": ["rx/0", "cn/r"]}
    msg = {"id": 1, "jsonrpc": "2.0", "method": "login", "params": login}
    return json.dumps(msg, separators=(",", ":")).encode() + b"\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("--dialect", choices=["xmrig", "cpuminer"], default="xmrig")
    ap.add_argument("--stay", type=float, default=0.0, help="keep the pool connection open this long")
    args = ap.parse_args()

    with socket.create_connection((args.host, args.port), timeout=5) as sock:
        sock.sendall(first_line(args.dialect))
        reader = sock.makefile("rb")
        reply = json.loads(reader.readline())
        if args.dialect == "xmrig":
            job = reply["result"]["job"]
            share = {"id": reply["result"]["id"], "job_id": job["job_id"], "nonce": "deadbeef", "result": "0" * 64}
            sock.sendall(json.dumps({"id": 2, "jsonrpc": "2.0", "method": "submit", "params": share}).encode() + b"\n")
            reader.readline()
            print(f"fake_miner: got job {job['job_id']} from {args.host}:{args.port}, submitted 1 share", flush=True)
        else:
            print(f"fake_miner: subscribed at {args.host}:{args.port}", flush=True)
        deadline = time.monotonic() + args.stay
        while time.monotonic() < deadline:
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
