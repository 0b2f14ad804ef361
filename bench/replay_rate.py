"""How many records per second `agentwatch replay` evaluates: synthetic records, synthetic or default rules.

    .venv/bin/python bench/replay_rate.py [--records N] [--rules PATH]... [--mix agent|exec] [--profile]

CPU time of this process is measured (the machine may be busy).
The records look like a busy agent's: forks, execs with argv and ancestry,
exits, connects, first bytes and DNS (--mix exec: execs only, the worst
case). Without --rules, 40 simple synthetic rules are used (single-event,
one sequence, one threshold); pass --rules rules/ for the default rules.
Nothing matches often, as in real life: a few alerts per 10,000 records.
"""

from __future__ import annotations

import sys
from pathlib import Path

# The repository, not bench/, first on the path: bench/ has modules named like the
# standard library's (profile.py).
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse  # noqa: E402
import cProfile  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import pstats  # noqa: E402
import random  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import orjson  # noqa: E402

from tracer.output import JsonLinesWriter  # noqa: E402
from tracer.replay import replay  # noqa: E402
from tracer.rules import Engine, load  # noqa: E402

COMMANDS = [
    ["python3", "-m", "pytest", "-q", "tests/unit"],
    ["git", "commit", "-m", "fix the parser"],
    ["gcc", "-O2", "-c", "main.c", "-o", "main.o"],
    ["sh", "-c", "ls -la /tmp | wc -l"],
    ["curl", "-s", "https://pypi.org/simple/orjson/"],
    ["pip", "install", "./dist/pkg-0.1-py3-none-any.whl"],
    ["node", "server.js", "--port", "8080"],
    ["cat", "README.md"],
    ["grep", "-rn", "TODO", "src/"],
    ["make", "-j2", "all"],
]
RARE = [
    ["ssh", "-N", "-R", "8080:localhost:80", "u@198.51.100.7"],
    ["xmrig", "-o", "stratum+tcp://pool.example:3333", "--donate-level=1"],
    ["chisel", "client", "198.51.100.7:443", "R:socks"],
]
ANCESTRY = [{"pid": 900, "comm": "bash", "exe": "/usr/bin/bash"},
            {"pid": 800, "comm": "python3", "exe": "/usr/bin/python3"},
            {"pid": 700, "comm": "agent", "exe": "/usr/bin/agent"},
            {"pid": 1, "comm": "systemd", "exe": "/usr/lib/systemd/systemd"}]


def records(n: int, mix: str, seed: int = 7):
    rnd = random.Random(seed)
    agent = {"id": "agent-637cfe85ef0b", "root_pid": 700, "labels": {"task": "42", "policy": "ppo-v3"}}
    t0 = 1_790_000_000.0
    for i in range(n):
        t = t0 + i * 0.0005
        sec = int(t)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{int((t - sec) * 1e9):09d}Z"
        argv = RARE[i % 3] if rnd.random() < 0.0005 else rnd.choice(COMMANDS)
        pid = 1000 + rnd.randrange(300)  # a few hundred live processes, as in an agent's tree
        proc = {"pid": pid, "ppid": 900, "uid": 1000, "comm": argv[0][:15], "exe": f"/usr/bin/{argv[0]}",
                "argv": argv, "argv_truncated": False, "key": f"{pid}:5000", "ancestry": ANCESTRY}
        kind = "exec" if mix == "exec" else rnd.choices(
            ["fork", "exec", "exit", "connect", "send", "dns"], [25, 25, 25, 15, 6, 4])[0]
        rec = {"kind": "event", "type": kind, "time": stamp, "agent": agent, "process": proc}
        if kind == "exec":
            rec["exec"] = {"filename": proc["exe"], "result": "ok", "retval": 0, "execveat": False,
                           "filename_truncated": False, "argv_unreadable": False}
        elif kind == "exit":
            rec["exit_code"], rec["signal"] = 0, None
        elif kind == "fork":
            rec["child"] = {"pid": pid + 1, "key": f"{pid + 1}:9"}
        else:
            external = rnd.random() < 0.3
            rec["network"] = {"family": "ipv4", "protocol": "udp" if kind == "dns" else "tcp",
                              "saddr": "10.0.0.5", "sport": 40000 + i % 20000,
                              "daddr": "151.101.0.223" if external else f"10.0.{i % 7}.{i % 250}",
                              "dport": 53 if kind == "dns" else rnd.choice([443, 80, 5432, 6379, 8080]),
                              "v4_mapped": False, "result": "EINPROGRESS", "retval": -115,
                              "scope": "external" if external else "private", "allowlisted": False}
            if kind == "send":
                rec["payload"] = {"text": "GET / HTTP/1.1\\x0d\\x0aHost: example\\x0d\\x0a", "length": 32,
                                  "truncated": False}
            elif kind == "dns":
                rec["dns"] = {"query": rnd.choice(["pypi.org", "files.pythonhosted.org", "github.com"]),
                              "qtype": "A"}
        yield rec


SYNTHETIC_RULES = """
- list: tunnel_tools
  items: [chisel, frpc, frps, ngrok, cloudflared, gost, bore, iodine, ptunnel-ng, stunnel4]
- list: miner_names
  items: [xmrig, xmr-stak, cpuminer, minerd, ccminer, t-rex, lolminer, nbminer, teamredminer, ethminer]
- list: shells
  items: [sh, bash, dash, zsh, ksh]
- list: pool_ports
  items: [3333, 4444, 5555, 7777, 14444, 45700]
- list: pool_domains
  items: [supportxmr.com, nanopool.org, minexmr.com, hashvault.pro, moneroocean.stream, 2miners.com]
- macro: ssh_client
  condition: proc.name in (ssh, autossh)
"""


def synthetic_rules(path: Path) -> None:
    rules = []

    def rule(rid, events, condition, extra=""):
        rules.append(f"- rule: {rid}\n  severity: high\n  tags: [T1572]\n  events: [{events}]\n"
                     f"  condition: {json.dumps(condition)}\n{extra}")

    for flag in ["-R", "-L", "-D", "-w", "-J"]:
        rule(f"ssh-flag{flag.lower()}", "exec", f"ssh_client and proc.args = {flag}")
    rule("ssh-opt-forward", "exec", "ssh_client and proc.args icontains forward")
    rule("tunnel-tool", "exec", "proc.name in tunnel_tools")
    rule("miner-name", "exec", "proc.name in miner_names")
    rule("socat-exec", "exec", "proc.name = socat and proc.args icontains (exec:, system:)")
    rule("nc-exec", "exec", "proc.name in (nc, ncat, netcat) and proc.args in (-e, -c, --sh-exec)")
    rule("sshuttle", "exec", "proc.name = sshuttle")
    rule("proxychains", "exec", "proc.name in (proxychains, proxychains4, torsocks)")
    rule("nmap", "exec", "proc.name in (nmap, masscan, zmap, naabu)")
    rule("shell-interactive", "exec", "proc.name in shells and proc.args = -i and proc.pname in (nc, socat)")
    rule("stratum-argv", "exec", "proc.cmdline contains stratum+")
    rule("donate-level", "exec", "proc.args startswith --donate-level")
    rule("dev-tcp", "exec", "proc.cmdline contains /dev/tcp/")
    rule("python-revshell", "exec", "proc.name startswith python and proc.cmdline contains socket "
                                    "and proc.cmdline contains pty")
    rule("curl-pipe-sh", "exec", "proc.cmdline regex '(curl|wget)[^|]*[|] *(ba)?sh'")
    rule("ssh-config-forward", "exec", "proc.cmdline icontains RemoteForward")
    rule("tunnel-argv", "exec", "proc.args glob 'R:*:*'")
    rule("modprobe-msr", "exec", "proc.cmdline contains 'modprobe msr'")
    rule("huge-pages", "exec", "proc.cmdline contains vm.nr_hugepages")
    rule("base64-pipe", "exec", "proc.name in (base64, openssl) and proc.pname in shells")
    rule("agent-label", "exec", "agent.labels.policy = evil and proc.name = curl")
    rule("detached-exec", "exec", "proc.detached and proc.name in shells")
    rule("pool-port", "connect", "net.dport in pool_ports and not net.internal")
    rule("metadata", "connect", "net.daddr cidr (169.254.169.254/32, fd00:ec2::254/128)")
    rule("cf-edge", "connect", "net.dport = 7844")
    rule("ssh-out", "connect", "net.dport = 22 and not proc.name in (ssh, scp, sftp, git)")
    rule("tor-ports", "connect", "net.dport in (9001, 9030, 9050, 9150)")
    rule("irc", "connect", "net.dport in (6667, 6697)")
    rule("smtp", "connect", "net.dport in (25, 465, 587) and not net.internal")
    rule("stratum-bytes", "send", "payload.text regex '^\\\\s*\\\\{.{0,200}?\"method\"\\\\s*:\\\\s*\"(mining\\\\.|login)'")
    rule("ssh-banner", "send", "payload.text startswith SSH- and net.dport != 22")
    rule("chisel-ws", "send", "payload.text contains chisel-v3")
    rule("pool-dns", "dns", "dns.query endswith pool_domains")
    rule("txt-dns", "dns", "dns.qtype in (TXT, NULL) and dns.query regex '[a-z0-9]{40,}'")
    rule("scan", "connect", "net.internal",
         "  threshold: {by: process, within: 10, count: 50, distinct: [net.daddr, net.dport]}\n")
    rules.append("""- rule: reverse-tunnel
  severity: critical
  sequence:
    by: lineage
    within: 600
    steps:
      - {events: [connect], condition: net.scope = external and net.dport = 22}
      - {events: [connect], condition: "net.scope in (loopback, host)"}
""")
    path.write_text(SYNTHETIC_RULES + "\n".join(rules))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--rules", action="append")
    ap.add_argument("--mix", choices=["agent", "exec"], default="agent")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = args.rules
        if not paths:
            paths = [Path(tmp) / "synthetic.yaml"]
            synthetic_rules(paths[0])
        ruleset = load(paths, check_examples=False)
        data = b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in records(args.records, args.mix))
        best = None
        for _ in range(3):
            engine = Engine(ruleset.rules)
            out = io.BytesIO()
            start = time.process_time()
            if args.profile:
                prof = cProfile.Profile()
                prof.enable()
            n = replay(io.BytesIO(data), "synthetic", engine, JsonLinesWriter(out), False)
            elapsed = time.process_time() - start
            if args.profile:
                prof.disable()
                pstats.Stats(prof).sort_stats("tottime").print_stats(15)
                break
            best = elapsed if best is None else min(best, elapsed)
        alerts = out.getvalue().count(b"\n")
        if best is not None:
            lines = data.splitlines()
            start = time.process_time()
            for line in lines:
                orjson.loads(line)
            parse = time.process_time() - start
            print(f"{len(ruleset.rules)} rules, {n} records ({args.mix} mix, {len(data) / n:.0f} bytes each), "
                  f"{alerts} alerts: {n / best:,.0f} records/s (orjson.loads of every line alone: "
                  f"{n / parse:,.0f}/s)")


if __name__ == "__main__":
    main()
