"""Sinks: records/s from submit to delivered, for HttpSink and SyslogSink (tracer/sinks.py).

100,000 records (by default; BENCH_SCALE shrinks it), nine connect events to one alert, shaped as
the pipeline writes them (tests/unit/test_formats.py's session: an ssh child's connect, the
reverse-shell alert with its two evidence records), each with a time of its own so that every
record differs (HttpSink hashes each into its id). They are built before the clock starts. Then,
for each row, 3 runs, the median kept:

- http json / http ecs: an HttpSink (body=lines, batch_max 500, the defaults; its spool in a fresh
  directory under $TMPDIR, i.e. on the disk a spool lives on, fdatasync'ed every second as by
  default) POSTs to a receiver in a process of its own: http.server's ThreadingHTTPServer, HTTP/1.1
  keep-alive, that counts the lines and bytes of each body and answers 200. "ecs" encodes with
  tracer.delivery.encoder("ecs"), the --format ecs path (tracer.ecs.to_ecs, then orjson).
  Delivered: when sink.wait_idle() returns (every batch answered 2xx); the receiver's count is
  checked against it.
- rsyslog tcp / rsyslog unix: a SyslogSink sends to a real rsyslogd (tests/scenarios/rsyslog.py: its
  own inputs, imtcp on 127.0.0.1 and a unix datagram socket read as /dev/log is by default) that
  writes each msg as a line to a file in /dev/shm. Delivered: when rsyslog's file holds all the
  lines (the file is polled every 2 ms). The sink's queue is made big enough for the whole burst
  (queue_max_bytes 512 MiB) so that every record is sent: one thread submits faster than the
  sender sends, and 100,000 records of ~900 bytes are more than the default queue (64 MiB) holds.
  One more run each with the default queue says how many such a burst drops (queue_full, the
  oldest first).

Per run: records/s = N / (first submit to last delivered); MB/s = the records' bytes as encoded
over the same time (HTTP: the body bytes the receiver counted, each record's "id" included;
syslog: the JSON lines without the syslog header and framing); submit cost = the time the
submitting thread spent in submit(), per record (that thread is the BPF drain in agentwatch; the
sink's own sender thread runs at the same time and shares the GIL); tail = from the last submit
to the last delivered (near 0: the sender kept up with the submitting thread, and records/s is
the submit side's limit).

Standalone, `.venv/bin/python bench/sinks.py` writes sinks-results.md and sinks-results.json next
to this file; `make bench` runs it as the "sinks" phase (BENCH_PHASES=sinks) into results.md/json.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "scenarios"))

from rsyslog import RSYSLOGD, Rsyslogd  # noqa: E402
from stats import summary  # noqa: E402
from tracers import SHM  # noqa: E402
from workloads import scale  # noqa: E402

from tracer.delivery import encoder  # noqa: E402
from tracer.sinks import HttpSink, SyslogSink  # noqa: E402

RUNS = 3
N = 100_000
ALERT_EVERY = 10  # one record in ten is an alert
BURST_QUEUE_BYTES = 512 << 20

_PROCESS = {"pid": 5000003, "ppid": 5000002, "uid": 1000, "comm": "ssh", "exe": "/usr/bin/ssh",
            "argv": ["ssh", "-N", "-R", "8080:localhost:80", "user@198.51.100.7"], "argv_truncated": False,
            "key": "5000003:10200", "ancestry": [{"pid": 5000002, "comm": "agent", "exe": "/usr/bin/ssh"},
                                                 {"pid": 5000001, "comm": "agent", "exe": "/usr/bin/agent"}]}
_AGENT = {"id": "agent-formats", "root_pid": 5000001, "labels": {"task": "42", "com.example.team": "blue"}}
CONNECT = {"kind": "event", "type": "connect", "time": "2026-12-03T07:52:56.891377380Z", "agent": _AGENT,
           "process": _PROCESS,
           "network": {"family": "ipv4", "protocol": "tcp", "saddr": None, "sport": None, "daddr": "198.51.100.7",
                       "dport": 4444, "v4_mapped": False, "result": "ok", "retval": 0, "repeats": 0,
                       "scope": "external", "allowlisted": False}}
_SHELL = {**_PROCESS, "comm": "bash", "exe": "/bin/bash", "argv": ["bash", "-i"]}
ALERT = {"kind": "alert", "rule": "reverse-shell-connect-then-exec",
         "title": "A shell connects out, then becomes an interactive shell", "severity": "critical",
         "tags": ["reverse_shell", "T1059.004"], "mitre": ["T1059.004"], "time": "2026-12-03T07:52:56.892377380Z",
         "agent": _AGENT, "process": _SHELL,
         "message": "bash (pid 5000003) became a shell after connecting out: bash -i", "action": "none",
         "evidence": [{**CONNECT, "process": {**_PROCESS, "comm": "bash"}},
                      {"kind": "event", "type": "exec", "time": "2026-12-03T07:52:56.892377380Z", "agent": _AGENT,
                       "process": _SHELL,
                       "exec": {"filename": "/bin/bash", "result": "ok", "retval": 0, "execveat": False,
                                "filename_truncated": False, "argv_unreadable": False}}]}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def make_records(n: int) -> list[dict]:
    """n records, each its own time (the rest shared: the sinks only read them)."""
    base = 1_796_284_376_000_000_000  # 2026-12-03T07:52:56Z in ns
    out = []
    for i in range(n):
        ns = base + i * 1000
        sec, frac = divmod(ns, 1_000_000_000)
        t = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{frac:09d}Z"
        out.append(dict(ALERT if i % ALERT_EVERY == ALERT_EVERY - 1 else CONNECT, time=t))
    return out


# --- the HTTP receiver (a process of its own) -----------------------------------------------------


def receiver_main(port_file: str) -> None:
    counts = {"records": 0, "bytes": 0, "posts": 0}
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with lock:
                counts["records"] += body.count(b"\n")
                counts["bytes"] += len(body)
                counts["posts"] += 1
                if self.path == "/reset":
                    counts.update(records=0, bytes=0, posts=0)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self):  # noqa: N802
            with lock:
                data = json.dumps(counts).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    tmp = port_file + ".tmp"
    Path(tmp).write_text(str(server.server_address[1]))
    os.replace(tmp, port_file)
    server.serve_forever()


class Receiver:
    def __init__(self, workdir: Path) -> None:
        port_file = workdir / "receiver.port"
        self.proc = subprocess.Popen([sys.executable, __file__, "--receiver", str(port_file)],
                                     stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the HTTP receiver did not start")
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{int(port_file.read_text())}"

    def _call(self, path: str, data: bytes | None = None) -> dict:
        with urllib.request.urlopen(urllib.request.Request(self.url + path, data=data), timeout=10) as resp:
            body = resp.read()
        return json.loads(body) if body else {}

    def counts(self) -> dict:
        return self._call("/")

    def reset(self) -> None:
        self._call("/reset", b"")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


# --- one run ---------------------------------------------------------------------------------------


def _submit_all(sink, records: list[dict]) -> tuple[float, float]:
    """(t0, seconds spent in submit) for every record, submitted as fast as the caller can."""
    submit = sink.submit
    t0 = time.perf_counter()
    for r in records:
        submit(r)
    return t0, time.perf_counter() - t0


def http_run(receiver: Receiver, records: list[dict], fmt: str, workdir: Path) -> dict:
    spool = Path(tempfile.mkdtemp(prefix="awbench-spool-", dir=workdir))
    receiver.reset()
    sink = HttpSink(receiver.url + "/ingest", spool_dir=spool, encode=encoder(fmt, "bench-host"))
    try:
        t0, in_submit = _submit_all(sink, records)
        idle = sink.wait_idle(120)
        t1 = time.perf_counter()
    finally:
        sink.close(5)
        shutil.rmtree(spool, ignore_errors=True)
    st, got = sink.stats(), receiver.counts()
    return _row(len(records), t1 - t0, in_submit, delivered=st["delivered"], received=got["records"],
                body_bytes=got["bytes"], dropped=st["dropped"], complete=idle, posts=got["posts"],
                failed=st["failed"])


def _count_lines(path: Path, offset: int) -> tuple[int, int]:
    """(newlines in path from offset, new offset)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return 0, offset
    return data.count(b"\n"), offset + len(data)


def syslog_run(rs: Rsyslogd, records: list[dict], proto: str, queue_max_bytes: int | None = None) -> dict:
    _, offset = _count_lines(rs.out, 0)  # what the probes (and the runs before) left there
    queue = {} if queue_max_bytes is None else {"queue_max": len(records), "queue_max_bytes": queue_max_bytes}
    sink = SyslogSink(rs.target(proto), app_name="awbench", hostname="bench-host", **queue)
    seen, t_last, stable_since = 0, None, None
    try:
        t0, in_submit = _submit_all(sink, records)
        deadline = time.perf_counter() + 120
        while seen < len(records) and time.perf_counter() < deadline:
            n, offset = _count_lines(rs.out, offset)
            if n:
                seen += n
                t_last, stable_since = time.perf_counter(), None
            elif sink.stats()["queued"] == 0:  # all sent: what has not arrived by now was lost
                stable_since = stable_since or time.perf_counter()
                if time.perf_counter() - stable_since > 2.0:
                    break
            time.sleep(0.002)
    finally:
        sink.close(5)
    st = sink.stats()
    elapsed = (t_last or time.perf_counter()) - t0
    return _row(len(records), elapsed, in_submit, delivered=st["delivered"], received=seen, dropped=st["dropped"],
                complete=seen == len(records), failed=st["failed"])


def _row(n: int, elapsed: float, in_submit: float, **extra) -> dict:
    return {"records": n, "elapsed_s": elapsed, "records_per_s": extra.get("received", n) / elapsed,
            "submit_us": in_submit / n * 1e6, "tail_s": elapsed - in_submit, **extra}


# --- the phase ------------------------------------------------------------------------------------

ROWS = [("http json", "HttpSink, body=lines, --format json"), ("http ecs", "HttpSink, body=lines, --format ecs"),
        ("rsyslog tcp", "SyslogSink tcp (RFC 6587 octet counting) into rsyslogd imtcp"),
        ("rsyslog unix", "SyslogSink unix datagram (syslog(3)'s syntax) into rsyslogd imuxsock as /dev/log is read")]


def measure(n: int = N, runs: int = RUNS, log=log) -> dict:
    records = make_records(n)
    payload_bytes = {fmt: sum(len(encoder(fmt, "bench-host")(r)) for r in records) for fmt in ("json", "ecs")}
    res: dict = {"records": n, "runs": runs, "alert_every": ALERT_EVERY, "payload_bytes": payload_bytes,
                 "spool_dir": tempfile.gettempdir(), "rows": {}, "notes": []}
    work = Path(tempfile.mkdtemp(prefix="awbench-sinks-"))
    shm = Path(tempfile.mkdtemp(prefix="awbench-rsyslog-", dir=SHM))
    raw: dict[str, list[dict]] = {name: [] for name, _ in ROWS}
    receiver = rs = None
    try:
        receiver = Receiver(work)
        if RSYSLOGD is not None:
            rs = Rsyslogd(shm, template="msg")
            rs.start()
            version = subprocess.run([RSYSLOGD, "-v"], capture_output=True, text=True).stdout.split()
            res["rsyslogd"] = " ".join(version[:2])
        else:
            res["notes"].append("rsyslogd is not installed: the rsyslog rows are n/a (scripts/setup.sh installs it)")
        for i in range(runs):  # interleaved: a slow moment of the machine spreads over every row
            for name, _ in ROWS:
                if name.startswith("http"):
                    fmt = name.split()[1]
                    r = http_run(receiver, records, fmt, work)
                    r["mb_per_s"] = r["body_bytes"] / r["elapsed_s"] / 1e6
                elif rs is not None:
                    r = syslog_run(rs, records, name.split()[1], BURST_QUEUE_BYTES)
                    r["mb_per_s"] = payload_bytes["json"] * r["received"] / n / r["elapsed_s"] / 1e6
                else:
                    continue
                raw[name].append(r)
                log(f"  {name} run {i + 1}: {r['records_per_s']:,.0f} records/s, {r['mb_per_s']:.1f} MB/s, "
                    f"submit {r['submit_us']:.1f} us/record, {r['received']}/{n} arrived, dropped {r['dropped']}")
        if rs is not None:
            res["default_queue"] = {}
            for proto in ("tcp", "unix"):
                r = syslog_run(rs, records, proto)
                res["default_queue"][proto] = {k: r[k] for k in ("received", "dropped", "records_per_s")}
                log(f"  rsyslog {proto}, default queue: {r['received']}/{n} arrived, dropped {r['dropped']}")
    finally:
        if rs is not None:
            rs.stop()
        if receiver is not None:
            receiver.stop()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(shm, ignore_errors=True)
    for name, description in ROWS:
        rs_ = raw[name]
        if not rs_:
            continue
        res["rows"][name] = {
            "description": description,
            "records_per_s": summary([r["records_per_s"] for r in rs_]),
            "mb_per_s": summary([r["mb_per_s"] for r in rs_]),
            "submit_us": summary([r["submit_us"] for r in rs_]),
            "elapsed_s": summary([r["elapsed_s"] for r in rs_]),
            "tail_s": summary([r["tail_s"] for r in rs_]),
            "received": min(r["received"] for r in rs_), "dropped": max(r["dropped"] for r in rs_),
            "complete": all(r["complete"] for r in rs_),
            "raw": rs_,
        }
    return res


# --- standalone ------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=scale(N), help=f"records a run (default {N} x BENCH_SCALE)")
    ap.add_argument("--runs", type=int, default=RUNS)
    ap.add_argument("--no-write", action="store_true", help="print, do not write sinks-results.*")
    ap.add_argument("--wait-quiet", type=float, default=0, metavar="S",
                    help="first wait up to S seconds for the load average to fall below 0.5")
    ap.add_argument("--receiver", metavar="PORT_FILE", help=argparse.SUPPRESS)  # the HTTP receiver's process
    args = ap.parse_args()
    if args.receiver:
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
        receiver_main(args.receiver)
        return 0

    def on_term(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    import report  # noqa: PLC0415
    import sysinfo  # noqa: PLC0415

    if args.wait_quiet > 0:
        sysinfo.wait_quiet(args.wait_quiet, 0.5, log)
    t0 = time.monotonic()
    res: dict = {"system": sysinfo.collect(), "notes": []}
    res["agentwatch"] = {"version": _version()}
    log("== sinks")
    res["sinks"] = measure(args.records, args.runs)
    res["system"]["loadavg_end"] = sysinfo.loadavg()
    res["duration_s"] = time.monotonic() - t0
    md = sinks_markdown(res, report)
    print(md)
    if not args.no_write:
        (HERE / "sinks-results.md").write_text(md)
        (HERE / "sinks-results.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
        log(f"sinks: wrote {HERE / 'sinks-results.md'} and {HERE / 'sinks-results.json'} in {res['duration_s']:.0f} s")
    return 0 if all(r["complete"] for r in res["sinks"]["rows"].values()) else 1


def _version() -> str:
    out = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True)
    return out.stdout.strip() or "?"


def sinks_markdown(res: dict, report) -> str:
    info = res["system"]
    L = ["# agentwatch sink throughput", ""]
    L.append(f"{info['date']} on {info['cpu']} ({info['cpus']} CPUs, {info['memory_gib']} GiB), {info['os']}, "
             f"kernel {info['kernel']}. agentwatch {res['agentwatch']['version']}, Python {info['python']}. "
             f"Load average at start {info['loadavg_start'][0]:.2f}, at end {info.get('loadavg_end', [0])[0]:.2f}. "
             f"Took {res['duration_s']:.0f} s. `.venv/bin/python bench/sinks.py` (bench/sinks.py says how each "
             "figure is taken).")
    L += report.sinks_section(res)
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    sys.exit(main())
