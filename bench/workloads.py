"""The workloads: commands over the compiled programs, and the fixtures they need.

Each workload program times itself and prints `BENCH ops=N elapsed_s=S
cpu_s=C`; the harness never times a workload from outside, so tracer start
and stop never enter a workload's figure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BENCH_LINE = re.compile(rb"BENCH ops=(\d+) elapsed_s=([\d.]+) cpu_s=([\d.]+)")


@dataclass
class Workload:
    name: str
    argv: list[str]
    # events one run produces inside the agent, by record type (for loss)
    expected: dict[str, int] = field(default_factory=dict)
    description: str = ""


def parse_bench(out: bytes) -> dict | None:
    m = BENCH_LINE.search(out)
    if not m:
        return None
    return {"ops": int(m.group(1)), "elapsed_s": float(m.group(2)), "cpu_s": float(m.group(3))}


def scale(n: int) -> int:
    """BENCH_SCALE (default 1) shrinks counts for development runs."""
    return max(1, int(n * float(os.environ.get("BENCH_SCALE", "1"))))


class MixFixture:
    """What the agent-like mix needs: a scratch folder with its files and a
    network namespace (`ip netns add`) holding a python http.server on its
    own loopback. Nothing is added to the root namespace; all is removed."""

    def __init__(self) -> None:
        self.netns = f"awbench{os.getpid()}"
        self.port = 8000
        self.dir = Path(tempfile.mkdtemp(prefix="awbench-mix-"))
        self.server: subprocess.Popen | None = None
        self.error: str | None = None

    @staticmethod
    def remove_stale() -> None:
        """Namespaces of earlier runs that were killed (awbench<pid> of a pid that is gone)."""
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            name = line.split()[0] if line.split() else ""
            pid = name[len("awbench"):]
            if name.startswith("awbench") and pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                subprocess.run(["ip", "netns", "delete", name], capture_output=True)

    def setup(self) -> bool:
        if shutil.which("ip"):
            self.remove_stale()
        shutil.copy(HERE / "mix" / "hello.c", self.dir / "hello.c")
        suite = self.dir / "suite"
        suite.mkdir()
        shutil.copy(HERE / "mix" / "test_mini.py", suite / "test_mini.py")
        www = self.dir / "www"
        www.mkdir()
        (www / "index.html").write_text("<html><body>agentwatch bench</body></html>\n")
        (www / "data.json").write_text('{"ok": true}\n')
        for tool in ("git", "curl", "ip"):
            if not shutil.which(tool):
                self.error = f"{tool} not installed"
                return False
        try:
            subprocess.run(["ip", "netns", "add", self.netns], check=True, capture_output=True)
            subprocess.run(["ip", "-n", self.netns, "link", "set", "lo", "up"], check=True, capture_output=True)
        except subprocess.CalledProcessError as exc:
            self.error = f"ip netns: {exc.stderr.decode(errors='replace').strip()}"
            return False
        self.server = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, "/usr/bin/python3", "-m", "http.server",
             "--bind", "127.0.0.1", "--directory", str(www), str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            probe = subprocess.run(["ip", "netns", "exec", self.netns, "curl", "-sf", "-o", "/dev/null",
                                    f"http://127.0.0.1:{self.port}/"], capture_output=True)
            if probe.returncode == 0:
                break
            time.sleep(0.1)
        else:
            self.error = "http.server in the namespace did not answer"
            return False
        self.script = self.dir / "mix.txt"
        py = str(ROOT / ".venv" / "bin" / "python")
        if not Path(py).exists():
            py = sys.executable
        url = f"http://127.0.0.1:{self.port}"
        git = "git -c user.name=bench -c user.email=bench@example.invalid -c init.defaultBranch=main"
        self.script.write_text("\n".join([
            "# the agent-like mix: one command per line (see progs/agent_mix.c)",
            "rm -rf repo",
            f"{git} init -q repo",
            "cp hello.c repo/hello.c",
            f"{git} -C repo add hello.c",
            f"{git} -C repo commit -q -m initial",
            "gcc -O2 -o repo/hello repo/hello.c",
            "repo/hello alpha beta gamma",
            f"{git} -C repo status --short",
            f"{py} -m pytest -q -p no:cacheprovider suite",
            f"@netns {self.netns} curl -sf -o /dev/null {url}/",
            f"@netns {self.netns} curl -sf -o /dev/null {url}/data.json",
            f"@netns {self.netns} curl -sf -o /dev/null {url}/index.html",
            f"{git} -C repo log --oneline",
        ]) + "\n")
        return True

    def teardown(self) -> None:
        if self.server is not None:
            self.server.terminate()
            try:
                self.server.wait(10)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()
            self.server = None
        subprocess.run(["ip", "netns", "delete", self.netns], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def make_workloads(progs: dict[str, str], mix: MixFixture | None) -> list[Workload]:
    """The overhead workloads that could be built here, in a fixed order."""
    out = []
    n_exec, n_tcp, n_udp, n_ioctl = scale(2000), scale(10000), scale(100000), scale(1000000)
    n_udpnew = scale(30000)
    if "exec_storm" in progs:
        out.append(Workload("exec", [progs["exec_storm"], str(n_exec)],
                            {"fork": n_exec, "exec": n_exec + 1, "exit": n_exec + 1},
                            f"fork+exec /bin/true x{n_exec}"))
    if "net_storm" in progs:
        out.append(Workload("connect-tcp", [progs["net_storm"], "tcp", str(n_tcp)], {"connect": n_tcp},
                            f"TCP connect+accept x{n_tcp}, private netns loopback"))
        out.append(Workload("connect-udp", [progs["net_storm"], "udp", str(n_udp)], {"connect": n_udp},
                            f"UDP connect() x{n_udp} on one socket, private netns loopback"))
        out.append(Workload("connect-udp-new", [progs["net_storm"], "udpnew", str(n_udpnew)],
                            {"connect": n_udpnew},
                            f"UDP socket+connect+close x{n_udpnew}, a new socket each, private netns loopback"))
    if "gpu_storm" in progs:
        out.append(Workload("gpu-ioctl", [progs["gpu_storm"], str(n_ioctl)], {},
                            f"RM_CONTROL ioctl x{n_ioctl} on a simulated /dev/nvidiactl"))
    if "agent_mix" in progs and mix is not None and mix.error is None:
        out.append(Workload("agent-mix", [progs["agent_mix"], str(mix.dir), str(mix.script)], {},
                            "git init/add/commit, gcc, pytest (5 tests), 3x curl into a netns http.server"))
    return out


def run_once(argv: list[str], timeout: float = 300, env: dict | None = None, on_start=None) -> dict:
    """Run argv to the end; the workload's own BENCH figures plus how the run ended.

    stdout/stderr go to files and the child is reaped with wait4, so the
    rusage of argv's process (e.g. agentwatch and everything it reaped) is
    known: tree_cpu_s. on_start(proc) runs right after the start (samplers).
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env)
        if on_start is not None:
            on_start(proc)
        deadline = t0 + timeout
        timed_out = False
        while True:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                timed_out = True
                proc.kill()
                pid, status, ru = os.wait4(proc.pid, 0)
                break
            time.sleep(0.005)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - t0
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    res = parse_bench(stdout) or {}
    res.update({
        "exit": proc.returncode, "wall_s": wall, "tree_cpu_s": ru.ru_utime + ru.ru_stime,
        "timed_out": timed_out, "ok": proc.returncode == 0 and "elapsed_s" in res and not timed_out,
    })
    if not res["ok"]:
        res["stderr"] = stderr.decode(errors="replace").strip()[-400:]
    return res
