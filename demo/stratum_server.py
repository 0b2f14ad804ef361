#!/usr/bin/env python3
"""A tiny stratum pool for the demo and the scenario tests: it hands out one
fake job and accepts every share. Standard library only; never mines anything.

    stratum_server.py --bind 198.18.0.1 --port 3333 --port 443

Speaks the line-delimited JSON-RPC of the xmrig (CryptoNote) dialect
(`login`, `submit`, `keepalived`) and answers the Bitcoin-style
`mining.subscribe` / `mining.authorize` too. Prints "ready" once listening.
"""

from __future__ import annotations

import argparse
import json
import socket
import socketserver
import sys
import threading

JOB = {"blob": "0" * 152, "job_id": "1", "target": "b88d0600", "algo": "rx/0", "height": 1, "seed_hash": "0" * 64}


def answer(msg: dict) -> dict | None:
    method, mid = msg.get("method"), msg.get("id")
    if method == "login":
        return {"id": mid, "jsonrpc": "2.0", "error": None, "result": {"id": "fake", "job": JOB, "status": "OK"}}
    if method in ("submit", "keepalived"):
        return {"id": mid, "jsonrpc": "2.0", "error": None, "result": {"status": "OK"}}
    if method == "mining.subscribe":
        return {"id": mid, "result": [[["mining.notify", "1"]], "00000000", 4], "error": None}
    if method == "mining.authorize":
        return {"id": mid, "result": True, "error": None}
    return {"id": mid, "result": None, "error": {"code": -1, "message": "unknown method"}}


class Handler(socketserver.StreamRequestHandler):
    timeout = 10

    def handle(self) -> None:
        try:
            for line in self.rfile:
                try:
                    msg = json.loads(line)
                except ValueError:
                    return
                reply = answer(msg) if isinstance(msg, dict) else None
                if reply is not None:
                    self.wfile.write(json.dumps(reply).encode() + b"\n")
        except OSError:
            pass


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bind", default="127.0.0.1")
    ap.add_argument("--port", type=int, action="append", required=True)
    args = ap.parse_args()
    family = socket.AF_INET6 if ":" in args.bind else socket.AF_INET
    servers = []
    for port in args.port:
        Server.address_family = family
        srv = Server((args.bind, port), Handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
    print("ready", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
