"""A real rsyslogd of the caller's own, for tests/scenarios/test_rsyslog.py and bench/sinks.py.

One rsyslogd per Rsyslogd, started from a config written into its directory: no system input
(imuxsock with SysSock.Use="off", so /dev/log is left alone), two unix datagram sockets of its
own ("log" read as /dev/log is by default, with imuxsock's special parser for syslog(3)'s syntax;
"log5424" with the RFC 5424 parser), imudp and imtcp bound to 127.0.0.1 on free ports (loopback
only: no address or route is added), and its own workDirectory and pid file. Everything those
inputs receive goes, through one ruleset (so rsyslogd's own messages stay out), to one file:

- template "fields": a JSON object a line with what rsyslog parsed (app-name, procid, msgid,
  facility, severity, the reported time as RFC 3339, hostname, structured data, the input, msg);
- template "msg": the msg alone, a line each (cheap, for counting).

start() returns once a probe sent through each input is in the file (not after a fixed sleep),
and stop() kills it whatever happens; the caller puts stop() in a finally.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

RSYSLOGD = shutil.which("rsyslogd") or ("/usr/sbin/rsyslogd" if os.access("/usr/sbin/rsyslogd", os.X_OK) else None)

# rsyslog.conf(5) RainerScript; jsonf: each property as a JSON "name":"value" pair, escaped by rsyslog.
TEMPLATES = {
    "fields": """template(name="out" type="list" option.jsonf="on") {
  property(outname="app" name="app-name" format="jsonf")
  property(outname="procid" name="procid" format="jsonf")
  property(outname="msgid" name="msgid" format="jsonf")
  property(outname="facility" name="syslogfacility" format="jsonf")
  property(outname="severity" name="syslogseverity" format="jsonf")
  property(outname="time" name="timereported" dateFormat="rfc3339" format="jsonf")
  property(outname="host" name="hostname" format="jsonf")
  property(outname="sd" name="structured-data" format="jsonf")
  property(outname="input" name="inputname" format="jsonf")
  property(outname="msg" name="msg" format="jsonf")
}""",
    "msg": 'template(name="out" type="string" string="%msg%\\n")',
}
PROBE_APP = "aw-ready"


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Rsyslogd:
    def __init__(self, directory: Path, template: str = "fields", max_message_size: str = "8k") -> None:
        if RSYSLOGD is None:
            raise RuntimeError("rsyslogd is not installed (scripts/setup.sh installs it)")
        self.dir = Path(directory)
        self.work = self.dir / "work"
        self.work.mkdir(parents=True, exist_ok=True)
        self.socket = self.dir / "log"
        self.socket5424 = self.dir / "log5424"
        self.out = self.dir / "out.log"
        self.conf = self.dir / "rsyslog.conf"
        self.pidfile = self.dir / "rsyslogd.pid"
        self.stderr = self.dir / "rsyslogd.stderr"
        self.template = template
        self.max_message_size = max_message_size
        self.tcp_port = free_port(socket.SOCK_STREAM)
        self.udp_port = free_port(socket.SOCK_DGRAM)
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def target(self, proto: str) -> str:
        """The SyslogSink target of one of its inputs: unix, unix5424, udp or tcp."""
        return {"unix": f"unix:{self.socket}", "unix5424": f"unix:{self.socket5424}",
                "udp": f"udp:127.0.0.1:{self.udp_port}", "tcp": f"tcp:127.0.0.1:{self.tcp_port}"}[proto]

    def config(self) -> str:
        return f"""global(workDirectory="{self.work}" maxMessageSize="{self.max_message_size}")
module(load="imuxsock" SysSock.Use="off")
module(load="imudp")
module(load="imtcp")
{TEMPLATES[self.template]}
ruleset(name="aw") {{
  action(type="omfile" file="{self.out}" template="out")
}}
# "log": imuxsock's defaults, as a distribution's rsyslog reads /dev/log (the special parser, for
# syslog(3)'s syntax only; the time of receipt, not the sender's timestamp; the local hostname).
input(type="imuxsock" Socket="{self.socket}" Ruleset="aw")
# "log5424": UseSpecialParser off, so that the RFC 5424 parser reads it; keep the sender's
# timestamp and hostname.
input(type="imuxsock" Socket="{self.socket5424}" UseSpecialParser="off" ParseHostname="on" IgnoreTimestamp="off"
      Ruleset="aw")
input(type="imudp" address="127.0.0.1" port="{self.udp_port}" ruleset="aw")
input(type="imtcp" address="127.0.0.1" port="{self.tcp_port}" ruleset="aw")
"""

    def start(self, timeout: float = 20.0) -> None:
        """Start it (again, on the same ports and file) and return once each input delivers to the file."""
        assert self.proc is None or self.proc.poll() is not None, "rsyslogd is running"
        self.conf.write_text(self.config())
        with open(self.stderr, "ab") as err:
            self.proc = subprocess.Popen([RSYSLOGD, "-n", "-f", str(self.conf), "-i", str(self.pidfile)],
                                         stdin=subprocess.DEVNULL, stdout=err, stderr=subprocess.STDOUT)
        self.starts += 1
        nonce = uuid.uuid4().hex
        pending = {"unix", "unix5424", "udp", "tcp"}
        deadline = time.monotonic() + timeout
        while pending:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rsyslogd exited {self.proc.returncode}: {self.log()[-2000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"rsyslogd not ready after {timeout} s (no probe from {sorted(pending)}): "
                                   f"{self.log()[-2000:]}")
            for proto in sorted(pending):
                self._probe(proto, f"{nonce}-{proto}-{self.starts}")
            time.sleep(0.05)
            text = self.out.read_text(errors="replace") if self.out.exists() else ""
            pending = {p for p in pending if f"{nonce}-{p}-{self.starts}" not in text}

    def _probe(self, proto: str, word: str) -> None:
        """One message through one input; nothing if that input is not listening yet."""
        if proto == "unix":  # syslog(3)'s syntax, the only one its special parser reads
            msg = f"<14>{time.strftime('%b %e %H:%M:%S')} {PROBE_APP}[1]: {word}".encode()
        else:
            msg = f"<14>1 - - {PROBE_APP} - {proto} - {word}".encode()
        try:
            if proto == "tcp":
                with socket.create_connection(("127.0.0.1", self.tcp_port), timeout=1) as s:
                    s.sendall(b"%d %s" % (len(msg), msg))
            elif proto == "udp":
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.sendto(msg, ("127.0.0.1", self.udp_port))
            else:
                path = self.socket if proto == "unix" else self.socket5424
                if path.exists():
                    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                        s.sendto(msg, str(path))
        except OSError:
            pass

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (it writes what it holds, then exits), SIGKILL if it does not within timeout."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.stderr.read_text(errors="replace") if self.stderr.exists() else ""

    def lines(self) -> list[bytes]:
        """The whole lines in the file (rsyslog may be in the middle of writing the last one)."""
        data = self.out.read_bytes() if self.out.exists() else b""
        return data[:data.rfind(b"\n") + 1].splitlines()

    def messages(self, app: str | None = None) -> list[dict]:
        """What the "fields" template wrote (probes left out), of app-name app if given."""
        out = []
        for line in self.lines():
            m = json.loads(line)
            if m["app"] != PROBE_APP and (app is None or m["app"] == app):
                out.append(m)
        return out

    def wait_messages(self, app: str, n: int, timeout: float = 15.0) -> list[dict]:
        """Once n messages of app are in the file (or timeout): all of them, and a moment more for extras."""
        deadline = time.monotonic() + timeout
        got = self.messages(app)
        while len(got) < n and time.monotonic() < deadline:
            time.sleep(0.05)
            got = self.messages(app)
        time.sleep(0.2)  # anything past n (a duplicate, a split message) would be here by now
        return self.messages(app)
