"""Fleet mode: one `agentwatch daemon` with 100 sandboxes and 10,000 live processes.

The sandboxes are cgroups under a slice of the benchmark's own,
<cgroup v2 mount>/awbench-fleet-<pid>.slice/sb-NNN, all made before the
daemon starts (it adopts them from its scan). The daemon's config asks for
every event record (`events: true`) to a tmpfs file, the repo's rules, no
Docker, and a control socket and state file in a temp dir. Then:

1. memory: progs/sleepers runs in every sandbox (a shell that moves itself
   into the sandbox's cgroup.procs, then execs sleepers), 100 children
   each: 10,000 sleeping processes the daemon saw forked. Private_Dirty of
   the daemon (smaps_rollup) once all their fork records are in the output
   and 2 s more, the peak over the whole run (procmon.Sampler, BPF compile
   at start included) and the kernel memory of its BPF maps (memlock).
2. sandbox creation to first attributed event, with the 10,000 live: t0,
   mkdir a new sandbox cgroup, at once a shell (started beforehand, waiting
   on its stdin) moves itself in and execs /bin/true; t1 when the exec
   record of /bin/true, named after the new sandbox, is read from the
   output file (tailed every 1 ms). t1 - t0 is the delay a user sees; the
   record's `time` (kernel time as wall clock) minus the wall clock just
   before the mkdir, and that time against the daemon's sandbox_added
   record, show that the exec was attributed at its birth, before the
   daemon had adopted the sandbox. Each cgroup is removed after.
3. episode boundaries: begin/end pairs on one sandbox over the control
   socket (tracer.harness.Client): the begin round trip (the boundary is
   placed when the daemon reads the request; the reply carries
   boundary_to_reply_ns, from that stamp to the reply, measured inside it;
   the round trip less that bounds the time from send to effect) and the
   end round trip (the reply waits for a drain that began after the
   boundary).

Everything is undone however the run ends: the sleepers' stdin closed (then
cgroup.kill on the slice), the daemon stopped with SIGTERM, the cgroups
removed, the temp files deleted.

Standalone, `.venv/bin/python bench/fleet.py` writes fleet-results.md and
fleet-results.json next to this file; `make bench` runs it as the "fleet"
phase (BENCH_PHASES=fleet) into results.md/json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from awcli import Agentwatch, parse_time_ns  # noqa: E402
from procmon import Sampler, bpf_map_memlock, smaps_rollup  # noqa: E402
from stats import percentile  # noqa: E402
from tracers import SHM  # noqa: E402

from tracer import cgroups  # noqa: E402
from tracer.harness import Client, DaemonError  # noqa: E402

PY_RULES = ROOT / "rules"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def spread_ms(values_ns: list[int]) -> dict | None:
    """median, p90, max (and min, n) in ms."""
    if not values_ns:
        return None
    ms = [v / 1e6 for v in values_ns]
    return {"median": percentile(ms, 50), "p90": percentile(ms, 90), "max": max(ms), "min": min(ms), "n": len(ms)}


class Tail:
    """New complete lines of a file that another process appends to."""

    def __init__(self, path: Path, from_start: bool = False):
        self.f = open(path, "rb")
        if not from_start:
            self.f.seek(0, os.SEEK_END)
        self.pending = b""

    def lines(self) -> list[bytes]:
        chunk = self.f.read()
        if not chunk:
            return []
        parts = (self.pending + chunk).split(b"\n")
        self.pending = parts.pop()
        return parts

    def close(self) -> None:
        self.f.close()


def sandbox_of(rec: dict) -> str | None:
    return ((rec.get("agent") or {}).get("sandbox") or {}).get("name")


class FleetRun:
    """The slice, its sandboxes, the daemon and the sleepers; stop() undoes all of it."""

    def __init__(self, aw: Agentwatch, n_sandboxes: int):
        self.aw = aw
        self.mount = cgroups.require_mount()
        self.top = self.mount / f"awbench-fleet-{os.getpid()}.slice"
        self.rel = self.top.relative_to(self.mount).as_posix()
        self.names = [f"sb-{i:03d}" for i in range(n_sandboxes)]
        self.tmp = Path(tempfile.mkdtemp(prefix="awbench-fleet-"))
        self.output = SHM / f"awbench-fleet-{os.getpid()}.jsonl"
        self.socket = str(self.tmp / "control.sock")
        self.config = self.tmp / "agentwatch.yaml"
        self.log_path = self.tmp / "daemon.log"
        self.daemon: subprocess.Popen | None = None
        self.sampler: Sampler | None = None
        self.sleepers: list[subprocess.Popen] = []

    # ---- setup -------------------------------------------------------------------

    def make_sandboxes(self) -> None:
        self.top.mkdir()
        for n in self.names:
            (self.top / n).mkdir()

    def start_daemon(self, timeout: float = 120) -> float:
        """Start the daemon and wait for its daemon_started record; seconds it took."""
        self.output.unlink(missing_ok=True)
        self.config.write_text(textwrap.dedent(f"""\
            control:
              socket: {self.socket}
              mode: "0600"
            output: {self.output}
            state: {self.tmp}/state
            events: true
            docker_socket: /nonexistent/docker.sock
            rules: [{PY_RULES}]
            sandboxes:
              - match: {self.rel}/*
                on_alert: report
                labels: {{bench: fleet}}
            """))
        t0 = time.monotonic()
        with open(self.log_path, "wb") as logf:
            self.daemon = subprocess.Popen([*self.aw.cmd, "daemon", "--config", str(self.config)], stdout=logf,
                                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.tmp)
        self.sampler = Sampler(self.daemon.pid, 0.1).start()
        deadline = time.monotonic() + timeout
        while True:
            if self.output.exists() and b'"status":"daemon_started"' in self.output.read_bytes():
                return time.monotonic() - t0
            if self.daemon.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the daemon did not start: {self.daemon_log()[-1500:]}")
            time.sleep(0.05)

    def daemon_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def start_sleepers(self, sleepers: str, per_sandbox: int) -> list[str]:
        """sleepers in every sandbox; their "ready" lines once all have forked."""
        for n in self.names:
            cg = self.top / n
            argv = ["/bin/sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(cg), sleepers,
                    str(per_sandbox), "0"]
            self.sleepers.append(subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                                  stderr=subprocess.DEVNULL))
        return [p.stdout.readline().decode(errors="replace").strip() for p in self.sleepers]

    def client(self) -> Client:
        return Client(self.socket, timeout=30)

    # ---- teardown ----------------------------------------------------------------

    def stop_sleepers(self) -> None:
        for p in self.sleepers:
            try:
                p.stdin.close()  # sleepers kills and reaps its children, then exits
            except OSError:
                pass
        deadline = time.monotonic() + 30
        for p in self.sleepers:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        if self.top.exists():
            cgroups.kill_all(self.top)  # whatever is left (cgroup.kill)
            cgroups.wait_empty(self.top, timeout=10)
        for p in self.sleepers:
            if p.poll() is None:
                p.kill()
            p.wait()
            p.stdout.close()
        self.sleepers = []

    def stop_daemon(self) -> int | None:
        if self.daemon is None:
            return None
        if self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(30)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()
        if self.sampler is not None:
            self.sampler.stop()
        return self.daemon.returncode

    def stop(self) -> None:
        """Everything undone; each step runs even when an earlier one fails."""
        for step in (self.stop_sleepers, self.stop_daemon, self.remove_cgroups, self.remove_files):
            try:
                step()
            except BaseException as exc:  # noqa: BLE001  (the others still run)
                log(f"  fleet cleanup: {step.__name__}: {exc!r}")

    def remove_cgroups(self) -> None:
        if not self.top.exists():
            return
        for d, _dirs, _files in os.walk(self.top):
            freeze = Path(d, "cgroup.freeze")
            if freeze.exists():
                try:
                    freeze.write_text("0\n")
                except OSError:
                    pass
        cgroups.kill_all(self.top)
        cgroups.wait_empty(self.top, timeout=10)
        if not cgroups.remove(self.top):
            log(f"  fleet cleanup: {self.top} could not be removed")

    def remove_files(self) -> None:
        self.output.unlink(missing_ok=True)
        shutil.rmtree(self.tmp, ignore_errors=True)


# ---- the three measurements ------------------------------------------------------------

def count_forks(tail: Tail, seen: int) -> int:
    return seen + sum(1 for line in tail.lines() if b'"type":"fork"' in line)


def memory(run: FleetRun, sleepers: str, per_sandbox: int, settle: float, log) -> dict:
    expected = per_sandbox * len(run.names)
    tail = Tail(run.output)
    t0 = time.monotonic()
    ready = run.start_sleepers(sleepers, per_sandbox)
    t_ready = time.monotonic() - t0
    made = sum(int(r.split()[1]) for r in ready if r.startswith("ready"))
    log(f"  {made} sleeping processes in {len(run.names)} sandboxes, all ready in {t_ready:.1f} s")
    forks, deadline = 0, time.monotonic() + 120
    while forks < made and time.monotonic() < deadline and run.daemon.poll() is None:
        forks = count_forks(tail, forks)
        time.sleep(0.05)
    t_drained = time.monotonic() - t0
    time.sleep(settle)
    forks = count_forks(tail, forks)
    tail.close()
    pid = run.daemon.pid
    roll = smaps_rollup(pid)
    live = roll.get("Private_Dirty")
    memlock = bpf_map_memlock(pid)
    with run.client() as c:
        st = c.status()
    per_sb = [s["events"] for s in st["sandboxes"] if s["name"] in set(run.names)]
    log(f"  fork records {forks}/{made} in the output {t_drained:.1f} s after start; Private_Dirty "
        f"{live / 2**20 if live else float('nan'):.1f} MB live")
    return {
        "sandboxes": len(run.names),
        "processes_expected": expected,
        "processes_made": made,
        "sleepers_parents": len(run.sleepers),
        "ready_s": round(t_ready, 2),
        "forks_recorded": forks,
        "forks_drained_s": round(t_drained, 2),
        "live_private_dirty_mb": live / 2**20 if live is not None else None,
        "live_rss_mb": roll.get("Rss", 0) / 2**20 if roll else None,
        "bpf_maps_mb": memlock / 2**20 if memlock else None,
        "sandboxes_watched": len(st["sandboxes"]),
        "events_per_sandbox": {"min": min(per_sb), "max": max(per_sb)} if per_sb else None,
        "records": st["daemon"]["records"],
        "lost": st["daemon"]["lost"],
        "ok": live is not None and forks >= made == expected,
    }


def first_events(run: FleetRun, trials: int, timeout: float, log) -> dict:
    """New sandboxes one at a time, each timed from its mkdir to the exec record of its first process.

    The shell that becomes that process is started (and has exec'd /bin/sh) before the mkdir, and
    waits on its stdin: right after the mkdir one newline makes it move itself into the new cgroup
    and exec /bin/true, so the exec comes a moment after the mkdir, usually before the daemon has
    read the mkdir record and adopted the sandbox: attributed at birth, in the kernel.
    """
    rows = []
    for i in range(trials):
        name = f"new-{i:03d}"
        cg = run.top / name
        proc = subprocess.Popen(["/bin/sh", "-c", 'read go && echo $$ > "$0/cgroup.procs" && exec /bin/true',
                                 str(cg)], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        # /bin/sh is running, waiting on read; a random wait so that the mkdir falls anywhere in
        # the daemon's 10 ms poll tick (a fixed one locks the trials to one phase of it).
        time.sleep(random.uniform(0.05, 0.07))
        tail = Tail(run.output)
        t0_wall = time.time_ns()
        t0 = time.monotonic_ns()
        cg.mkdir()
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        want = name.encode()
        found = added = None
        t1 = t1_wall = added_ns = None
        deadline = t0 + int(timeout * 1e9)
        while found is None and time.monotonic_ns() < deadline:
            for line in tail.lines():
                if want not in line:
                    continue
                rec = orjson.loads(line)
                if sandbox_of(rec) != name:
                    continue
                if rec.get("status") == "sandbox_added" and added is None:
                    added, added_ns = rec, time.monotonic_ns() - t0
                if rec.get("type") == "exec" and (rec.get("exec") or {}).get("filename") == "/bin/true":
                    t1, t1_wall = time.monotonic_ns(), time.time_ns()
                    found = rec
                    break
            if found is None:
                time.sleep(0.001)
        tail.close()
        proc.stdin.close()
        proc.wait(10)
        row = {"sandbox": name, "attributed": found is not None, "exit_code": proc.returncode,
               "sandbox_added_read_ns": added_ns}
        if found is not None:
            exec_wall = parse_time_ns(found["time"])
            row["seen_ns"] = t1 - t0
            row["kernel_after_mkdir_ns"] = exec_wall - t0_wall
            row["kernel_to_read_ns"] = t1_wall - exec_wall
            row["episode"] = (found["agent"] or {}).get("episode")
            if added is not None:
                # The exec's kernel time before the daemon wrote sandbox_added: the kernel had
                # attributed it before userland adopted the sandbox.
                row["exec_before_adoption"] = exec_wall < parse_time_ns(added["time"])
        rows.append(row)
        cgroups.wait_empty(cg, timeout=2)
        cgroups.remove(cg)
        time.sleep(0.05)
    got = [r for r in rows if r["attributed"]]
    out = {
        "trials": trials,
        "attributed": len(got),
        "exec_before_adoption": sum(1 for r in got if r.get("exec_before_adoption")),
        "seen_ms": spread_ms([r["seen_ns"] for r in got]),
        "kernel_after_mkdir_ms": spread_ms([r["kernel_after_mkdir_ns"] for r in got]),
        "kernel_to_read_ms": spread_ms([r["kernel_to_read_ns"] for r in got]),
        "sandbox_added_read_ms": spread_ms([r["sandbox_added_read_ns"] for r in rows
                                            if r["sandbox_added_read_ns"] is not None]),
        "rows": rows,
    }
    s = out["seen_ms"]
    log(f"  first exec attributed {len(got)}/{trials} ({out['exec_before_adoption']} before the daemon adopted "
        f"the sandbox); seen after mkdir: median {s['median'] if s else float('nan'):.1f} ms, "
        f"max {s['max'] if s else float('nan'):.1f} ms")
    return out


def boundaries(run: FleetRun, pairs: int, log) -> dict:
    sb = run.names[0]
    begin_rt, effect, to_effect, end_rt, errors = [], [], [], [], []
    with run.client() as c:
        for i in range(pairs):
            try:
                t0 = time.monotonic_ns()
                reply = c.request({"op": "begin", "sandbox": sb, "episode": f"bench-{i}",
                                   "labels": {"step": str(i)}})
                t1 = time.monotonic_ns()
                result = c.end(sb)
                t2 = time.monotonic_ns()
            except DaemonError as exc:
                errors.append(str(exc))
                continue
            begin_rt.append(t1 - t0)
            effect.append(reply["boundary_to_reply_ns"])
            to_effect.append(t1 - t0 - reply["boundary_to_reply_ns"])
            end_rt.append(t2 - t1)
            if result.episode.get("id") != f"bench-{i}":
                errors.append(f"end returned episode {result.episode.get('id')!r}, not bench-{i}")
    out = {"sandbox": sb, "pairs": pairs, "done": len(begin_rt), "errors": errors[:5],
           "begin_round_trip_ms": spread_ms(begin_rt), "begin_boundary_to_reply_ms": spread_ms(effect),
           # The boundary is stamped when the daemon has read the request; what the daemon reports
           # (boundary_to_reply_ns) runs from that stamp to its reply. The round trip less that is
           # what the request took to be read plus the reply's way back: a bound on send to effect.
           "begin_send_to_effect_bound_ms": spread_ms(to_effect),
           "end_round_trip_ms": spread_ms(end_rt)}
    b, e = out["begin_round_trip_ms"], out["end_round_trip_ms"]
    if b and e:
        log(f"  {len(begin_rt)} boundaries: begin round trip median {b['median']:.2f} ms (p90 {b['p90']:.2f}), "
            f"end round trip median {e['median']:.1f} ms (p90 {e['p90']:.1f})")
    return out


def measure(aw: Agentwatch, progs: dict[str, str], n_sandboxes: int = 100, n_processes: int = 10_000,
            firsts: int = 30, pairs: int = 200, log=log) -> dict:
    if "sleepers" not in progs:
        return {"unavailable": "sleepers did not build"}
    per_sandbox = max(1, n_processes // n_sandboxes)
    res: dict = {"limits": limits(n_processes + n_sandboxes), "loadavg_start": loadavg()}
    run = FleetRun(aw, n_sandboxes)
    res["cgroup_slice"] = str(run.top)
    try:
        run.make_sandboxes()
        res["start_s"] = round(run.start_daemon(), 2)
        log(f"  daemon up in {res['start_s']:.1f} s watching {n_sandboxes} sandboxes")
        res["memory"] = memory(run, progs["sleepers"], per_sandbox, 2.0, log)
        res["loadavg_loaded"] = loadavg()
        res["first_event"] = first_events(run, firsts, 5.0, log)
        res["boundary"] = boundaries(run, pairs, log)
        with run.client() as c:
            st = c.status()["daemon"]
        res["daemon_status"] = {k: st[k] for k in ("records", "lost", "dropped_not_sandbox", "bad_requests")}
    except (RuntimeError, OSError, DaemonError) as exc:
        res["error"] = f"{type(exc).__name__}: {exc}"
        log(f"  fleet failed: {res['error']}")
    finally:
        sampler = run.sampler
        run.stop()
        res["daemon_exit"] = run.daemon.returncode if run.daemon is not None else None
        if sampler is not None:
            res["peak_private_dirty_mb"] = sampler.peak_private_dirty / 2**20
            res["peak_rss_mb"] = max(sampler.vm_hwm, sampler.peak_rss) / 2**20
            res["daemon_cpu_s"] = sampler.cpu
        res["cleaned_up"] = not run.top.exists()
        res["loadavg_end"] = loadavg()
    return res


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def limits(need: int) -> dict:
    """Whether this host lets root run `need` more processes (RLIMIT_NPROC, pid_max, threads-max)."""
    import resource  # noqa: PLC0415

    soft, _hard = resource.getrlimit(resource.RLIMIT_NPROC)
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    threads_max = int(Path("/proc/sys/kernel/threads-max").read_text())
    running = sum(1 for p in os.listdir("/proc") if p.isdigit())
    ok = (soft == resource.RLIM_INFINITY or soft >= running + need) and pid_max > running + need \
        and threads_max > running + need
    return {"ulimit_u": "unlimited" if soft == resource.RLIM_INFINITY else soft, "pid_max": pid_max,
            "threads_max": threads_max, "processes_before": running, "needed": need, "ok": ok}


# ---- standalone ---------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sandboxes", type=int, default=100)
    ap.add_argument("--processes", type=int, default=10_000)
    ap.add_argument("--firsts", type=int, default=30, help="new sandboxes timed to their first event")
    ap.add_argument("--boundaries", type=int, default=200, help="begin/end pairs")
    ap.add_argument("--no-write", action="store_true", help="print, do not write fleet-results.*")
    args = ap.parse_args()
    if os.geteuid() != 0:
        log("fleet: needs root (BPF, cgroups)")
        return 2

    def on_term(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    import build  # noqa: PLC0415
    import report  # noqa: PLC0415
    import sysinfo  # noqa: PLC0415

    t0 = time.monotonic()
    res: dict = {"system": sysinfo.collect(), "notes": []}
    aw = Agentwatch()
    res["agentwatch"] = {"command": aw.cmd, "version": aw.version()}
    with tempfile.TemporaryDirectory(prefix="awbench-progs-") as d:
        progs, failed = build.build_all(Path(d))
        if "sleepers" in failed:
            res["notes"].append(f"sleepers not built: {failed['sleepers']}")
        log("== fleet")
        res["fleet"] = measure(aw, progs, args.sandboxes, args.processes, args.firsts, args.boundaries)
    res["system"]["loadavg_end"] = sysinfo.loadavg()
    res["duration_s"] = time.monotonic() - t0
    md = fleet_markdown(res, report)
    print(md)
    if not args.no_write:
        (HERE / "fleet-results.md").write_text(md)
        (HERE / "fleet-results.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
        log(f"fleet: wrote {HERE / 'fleet-results.md'} and {HERE / 'fleet-results.json'} in {res['duration_s']:.0f} s")
    return 0 if "error" not in res["fleet"] else 1


def fleet_markdown(res: dict, report) -> str:
    info = res["system"]
    L = ["# agentwatch fleet benchmark (agentwatch daemon)", ""]
    L.append(f"{info['date']} on {info['cpu']} ({info['cpus']} CPUs, {info['memory_gib']} GiB), {info['os']}, "
             f"kernel {info['kernel']}. agentwatch {res['agentwatch']['version']}, Python {info['python']}, "
             f"bcc {info['bcc']}. Load average at start {info['loadavg_start'][0]:.2f}, at end "
             f"{info.get('loadavg_end', [0])[0]:.2f}. Took {res['duration_s']:.0f} s. "
             "`.venv/bin/python bench/fleet.py` (bench/fleet.py says how each figure is taken).")
    L += ["", "## Targets", ""]
    L += report._md_table(["target", "measured", "met"],
                          [[t["target"], t["measured"], {True: "met", False: "**missed**", None: "n/a"}[t["met"]]]
                           for t in report.fleet_targets(res)])
    L += report.fleet_section(res)
    notes = res.get("notes") or []
    if notes:
        L += ["", "## Notes", ""]
        L += [f"- {n}" for n in notes]
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    sys.exit(main())
