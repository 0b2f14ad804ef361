"""agentwatch command line: click commands that wire the modules together."""

from __future__ import annotations

import os
import sys
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import click

from .agents import LabelError, parse_labels
from .launcher import GatedChild, LaunchError
from .output import JsonLinesWriter, TableWriter
from .probes import ProbeConfig, ProbeError, program_text
from .rules import Engine, RulesError
from .rules import loader as rules_loader

USAGE_ERROR = 2


def fail(message: str) -> "NoReturn":  # noqa: F821
    """A user-caused problem: one line on stderr, exit code 2."""
    click.echo(f"agentwatch: {message}", err=True)
    sys.exit(USAGE_ERROR)


def rules_fail(exc: RulesError) -> "NoReturn":  # noqa: F821
    """A bad rule: its one line (file:line: rule id: what), exit code 2."""
    click.echo(str(exc), err=True)
    sys.exit(USAGE_ERROR)


def _load_rules(paths: tuple[str, ...], check_examples: bool = True) -> rules_loader.RuleSet:
    # A directory of community Sigma rules always holds some that cannot map: warn, load the rest.
    try:
        return rules_loader.load(list(paths) or None, check_examples=check_examples,
                                 sigma_refusal=lambda line: click.echo(f"warning: {line}", err=True))
    except RulesError as exc:
        rules_fail(exc)


def _protected() -> dict[int, int]:
    """agentwatch's threads and its parent, for the kernel's self-protection (bpf/guard.bpf.c)."""
    from . import events as ev  # noqa: PLC0415

    pids = {os.getppid(): ev.PROTECT_PARENT}
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = [os.getpid()]
    for tid in tids:
        pids[tid] = ev.PROTECT_SELF
    return pids


def _labels(pairs: tuple[str, ...]) -> dict[str, str]:
    try:
        return parse_labels(pairs)
    except LabelError as exc:
        fail(str(exc))


def _writer(stack: ExitStack, fmt: str | None, output: str | None, sinks: tuple[str, ...] = (), metrics=None):
    """The main stream (stdout or --output) in fmt, and every --sink beside it (tracer/delivery.py)."""
    from .delivery import DeliveryError, build_writer, default_host  # noqa: PLC0415

    if output:
        try:
            stream = stack.enter_context(open(output, "ab"))
        except OSError as exc:
            fail(f"cannot open --output {output}: {exc.strerror}")
    else:
        stream = sys.stdout.buffer
    if fmt is None:
        fmt = "table" if stream.isatty() else "json"
    try:
        return build_writer(stack, stream, fmt, sinks, host=default_host(fmt), metrics=metrics,
                            report=lambda line: click.echo(f"agentwatch: {line}", err=True))
    except DeliveryError as exc:
        fail(str(exc))  # names the spec


@dataclass
class _Contain:
    """What run --contain / watch --cgroup asked for, checked before anything is loaded."""

    policy: object | None        # tracer.policy.Policy, or None (watch --cgroup without --policy)
    cgroup: str | None = None    # watch --cgroup PATH; None: run --contain makes one
    dry_run: bool = False


def _load_policy(path: str | None):
    from .policy import PolicyError, load  # noqa: PLC0415

    try:
        return load(path)
    except PolicyError as exc:
        click.echo(str(exc), err=True)  # file:line: field: what
        sys.exit(USAGE_ERROR)


def _scope_config(internal: tuple[str, ...], allow: tuple[str, ...]):
    from .netscope import ScopeConfig  # noqa: PLC0415

    try:
        return ScopeConfig(internal=tuple(internal), allowlist=tuple(allow))
    except ValueError as exc:
        fail(f"--internal-cidr / --allow-dest: {exc}")


def _alert_rate(text: str | None):
    from .ratelimit import RateError, parse_rate  # noqa: PLC0415

    if text is None:
        return None
    try:
        return parse_rate(text)
    except RateError as exc:
        fail(f"--alert-rate {exc}")


def delivery_options(fn):
    """Alert storms held back, and Prometheus metrics."""
    fn = click.option("--metrics", "metrics_addr", metavar="ADDR:PORT", default=None,
                      help="Serve Prometheus metrics on ADDR:PORT (e.g. 127.0.0.1:9464).")(fn)
    return click.option("--alert-rate", "alert_rate", metavar="N/SECONDS", default=None,
                        help="Deliver at most N alerts per rule and agent in SECONDS (the rest are counted in an "
                             "alerts_suppressed record; a rule's rate_limit wins); default: no limit.")(fn)


def network_options(fn):
    """Site knowledge for destination scope: extra internal networks, expected destinations."""
    fn = click.option("--allow-dest", "allow_dests", multiple=True, metavar="CIDR",
                      help="Expected destination (e.g. the model API): network.allowlisted (repeatable).")(fn)
    return click.option("--internal-cidr", "internal_cidrs", multiple=True, metavar="CIDR",
                        help="Network that counts as internal (scope private), e.g. a VPC (repeatable).")(fn)


@contextmanager
def _session(fmt: str | None, output: str | None, host_wide: bool, ringbuf_pages: int,
             rules_paths: tuple[str, ...] = (), show_events: bool = True, contain: _Contain | None = None,
             dry_run: bool = False, scope_config=None, alert_rate=None, metrics_addr: str | None = None,
             sinks: tuple[str, ...] = ()):
    """Rules, writer, loaded probes, a pipeline over a process table seeded from /proc,
    and a stop flag for SIGINT/SIGTERM; everything undone on the way out.

    contain: also the agent's cgroup (made or adopted) and the egress policy
    programs (compiled in a child process while the main one compiles here:
    BCC 0.26 crashes when two compile in one process); the cgroup is placed
    and the policy attached by run_agent / watch."""
    from . import cgroups  # noqa: PLC0415
    from .probes import Probes  # noqa: PLC0415
    from .gpu import GpuMonitor, nvidia_present  # noqa: PLC0415
    from .netscope import ScopeClassifier  # noqa: PLC0415
    from .session import Pipeline, StopFlag, default_actor  # noqa: PLC0415

    ruleset = _load_rules(rules_paths)
    engine = Engine(ruleset.rules)  # before the BPF compile: a bad rule fails fast
    with ExitStack() as stack:
        ahead = None
        if contain is not None and contain.policy is not None:
            # The policy programs compile in a child meanwhile (nothing to do when cached); forked
            # here, before the metrics server's and the sinks' threads exist.
            from .probes import PolicyProbes  # noqa: PLC0415

            try:
                ahead = PolicyProbes.compile_ahead()
            except ProbeError as exc:
                fail(f"{exc} (run `agentwatch doctor` for details)")
            if ahead is not None:
                stack.callback(ahead.cancel)
        metrics = _metrics(stack, metrics_addr)
        writer = _writer(stack, fmt, output, sinks, metrics)
        writer = _rate_limited(stack, writer, ruleset, alert_rate, metrics)
        cgroup = None
        if contain is not None:
            try:
                if contain.cgroup is not None:
                    cgroup = cgroups.adopt(contain.cgroup)
                else:
                    cgroups.require_mount()
            except cgroups.CgroupError as exc:
                fail(str(exc))
        config = ProbeConfig(host_wide=host_wide, ringbuf_pages=ringbuf_pages, self_tgid=os.getpid(),
                             cgroups=contain is not None, guard_kill=contain is not None and not dry_run,
                             detach_in_background=True)
        try:
            probes = stack.enter_context(Probes(config))
        except ProbeError as exc:
            fail(f"{exc} (run `agentwatch doctor` for details)")
        policy_probes = None
        if contain is not None and contain.policy is not None:
            try:
                policy_probes = stack.enter_context(PolicyProbes(ahead))
            except ProbeError as exc:
                fail(f"{exc} (run `agentwatch doctor` for details)")
        probes.protect(_protected())
        monitor = GpuMonitor(probes)
        if not monitor.nvml.available and nvidia_present():
            click.echo(f"agentwatch: notice: no per-process GPU utilisation: {monitor.nvml.reason}", err=True)
        pipeline = Pipeline(probes, writer, rules=engine, show_events=show_events, gpu=monitor, metrics=metrics)
        if metrics is not None:
            metrics.agents_from(lambda: sum(1 for _ in pipeline.agents))
        if scope_config is not None:
            pipeline.scope = ScopeClassifier(scope_config)
        pipeline.actor = default_actor(pipeline, dry_run=dry_run)
        # Warm the scope classifier now (pyroute2's import and the first netlink read, ~150 ms):
        # lazily, it delayed the agent's first connect record, and so a kill, by as much.
        pipeline.scope.annotate({"daddr": "127.0.0.1"})
        if contain is not None:
            from .containment import Containment  # noqa: PLC0415

            if cgroup is None:
                try:
                    cgroup = cgroups.create_agent(pipeline.agents.next_id())
                except cgroups.CgroupError as exc:
                    fail(str(exc))
            containment = Containment(cgroup, contain.policy, policy_probes, dry_run=dry_run)
            pipeline.containment = containment
            stack.callback(containment.release)  # on any way out; a no-op once released
        pipeline.table.seed_from_proc()
        stop = StopFlag()
        stack.callback(stop.restore)
        try:
            yield pipeline, stop
        except BrokenPipeError:
            # The reader went away (`| head`): stop quietly, like other Unix tools.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            sys.exit(141)


def _metrics(stack: ExitStack, address: str | None):
    """Metrics served on address, or None."""
    if address is None:
        return None
    from .metrics import Metrics, MetricsError  # noqa: PLC0415

    metrics = Metrics()
    try:
        metrics.serve(address)
    except MetricsError as exc:
        fail(f"--metrics {exc}")
    except OSError as exc:
        fail(f"--metrics {address}: {exc.strerror}")
    stack.callback(metrics.close)
    return metrics


def _rate_limited(stack: ExitStack, writer, ruleset, rate, metrics, live: bool = True):
    """The writer behind an alert rate limit when one is asked for (or a rule has its own)."""
    if rate is None and not any(r.rate_limit for r in ruleset.rules):
        return writer
    from .ratelimit import AlertRateLimit  # noqa: PLC0415

    limiter = AlertRateLimit.for_rules(writer, ruleset.rules, rate, live=live, metrics=metrics)
    stack.callback(limiter.finish)  # the last summaries, before the output is closed
    return limiter


format_option = click.option(
    "--format", "fmt", type=click.Choice(["json", "table", "ecs", "ocsf"]), default=None,
    help="json lines (default when stdout is not a terminal), a live table, or JSON lines as Elastic Common "
         "Schema 8.17 (ecs) or OCSF 1.8.0 (ocsf) documents; sinks get the same format (table: json).",
)
sink_option = click.option(
    "--sink", "sinks", multiple=True, metavar="SPEC",
    help="Also deliver records to SPEC (repeatable): file:PATH?max_bytes=100M&keep=10, "
         "syslog:unix:/dev/log | syslog:udp:HOST:PORT | syslog:tcp:HOST:PORT, "
         "http:URL?spool=DIR[&token_file=F&body=array]. See docs/formats.md.",
)
output_option = click.option("--output", "-o", type=click.Path(dir_okay=False), help="Append records to FILE.")
label_option = click.option("--label", "-l", "labels", multiple=True, metavar="K=V", help="Label the agent (repeatable).")
rules_option = click.option(
    "--rules", "rules_paths", multiple=True, metavar="PATH",
    help="Rules file or directory of *.yaml (repeatable; default: the rules/ directory of agentwatch).",
)
events_option = click.option("--events", is_flag=True, help="Print every record too, not only alerts.")
ringbuf_option = click.option(
    "--ringbuf-pages", default=1024, show_default=True, hidden=True,
    help="Ring buffer size in pages (power of two).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Watch AI agents at the kernel level: every exec and connect of an agent's process tree."""


@main.command(context_settings={"ignore_unknown_options": True})
@label_option
@format_option
@output_option
@sink_option
@click.option("--linger", type=float, default=2.0, show_default=True,
              help="Seconds to keep watching descendants that outlive the root.")
@rules_option
@events_option
@ringbuf_option
@click.option("--contain", is_flag=True,
              help="Run the agent in its own cgroup with an egress policy enforced in the kernel.")
@click.option("--policy", "policy_path", type=click.Path(dir_okay=False), metavar="FILE",
              help="Egress policy for --contain (default: policies/rl-sandbox.yaml).")
@click.option("--dry-run", is_flag=True,
              help="Report rule actions and policy denials without acting (no kill, no deny).")
@click.option("--kill-on-exit", is_flag=True, help="SIGKILL the agent's processes that outlive its root.")
@network_options
@delivery_options
@click.option("--ebpf", is_flag=True, hidden=True, help="Print the BPF program and exit.")
@click.argument("command", nargs=-1, required=False, type=click.UNPROCESSED)
def run(labels, fmt, output, sinks, linger, rules_paths, events, ringbuf_pages, contain, policy_path, dry_run,
        kill_on_exit, internal_cidrs, allow_dests, alert_rate, metrics_addr, ebpf, command):
    """Run COMMAND as an agent and report what its process tree does."""
    if ebpf:
        click.echo(program_text())
        return
    if not command:
        fail("run needs a command: agentwatch run [OPTIONS] -- CMD [ARGS]...")
    if linger < 0:
        fail("--linger must be >= 0")
    if policy_path and not contain:
        fail("--policy needs --contain")
    from .session import run_agent  # noqa: PLC0415

    label_map = _labels(labels)
    spec = _Contain(_load_policy(policy_path), dry_run=dry_run) if contain else None
    scope = _scope_config(internal_cidrs, allow_dests)
    rate = _alert_rate(alert_rate)
    with _session(fmt, output, False, ringbuf_pages, rules_paths, events, spec, dry_run, scope, rate,
                  metrics_addr, sinks) as (pipeline, stop):
        try:
            code = run_agent(pipeline, GatedChild(list(command)), label_map, linger, stop,
                             kill_on_exit=kill_on_exit)
        except LaunchError as exc:
            pipeline.finish()
            click.echo(f"agentwatch: {exc}", err=True)
            code = 127
        except ProbeError as exc:
            pipeline.finish()
            fail(str(exc))
    sys.exit(code)


@main.command()
@click.option("--pid", "-p", "pids", type=int, multiple=True, help="Process to watch with its descendants (repeatable).")
@click.option("--all", "host_wide", is_flag=True, help="Watch every process on the host.")
@click.option("--cgroup", "cgroup_path", metavar="PATH",
              help="Watch an existing cgroup v2 (a container, a pod, a systemd unit) as one agent.")
@click.option("--policy", "policy_path", type=click.Path(dir_okay=False), metavar="FILE",
              help="With --cgroup: enforce this egress policy on the cgroup.")
@click.option("--dry-run", is_flag=True, help="Report rule actions and policy denials without acting.")
@click.option("--duration", type=float, default=None, help="Stop after this many seconds.")
@label_option
@format_option
@output_option
@sink_option
@rules_option
@events_option
@ringbuf_option
@network_options
@delivery_options
def watch(pids, host_wide, cgroup_path, policy_path, dry_run, duration, labels, fmt, output, sinks, rules_paths, events,
          ringbuf_pages, internal_cidrs, allow_dests, alert_rate, metrics_addr):
    """Trace existing processes and their descendants, a cgroup, or the whole host."""
    if sum(map(bool, (pids, host_wide, cgroup_path))) != 1:
        fail("watch needs one of --pid PID (repeatable), --cgroup PATH or --all")
    if policy_path and not cgroup_path:
        fail("--policy needs --cgroup (or use run --contain)")
    if duration is not None and duration <= 0:
        fail("--duration must be > 0")
    for pid in pids:
        if pid <= 0 or not os.path.exists(f"/proc/{pid}"):
            fail(f"--pid {pid}: no such process")
    from .session import watch as watch_loop  # noqa: PLC0415

    label_map = _labels(labels)
    spec = None
    if cgroup_path:
        spec = _Contain(_load_policy(policy_path) if policy_path else None, cgroup=cgroup_path, dry_run=dry_run)
    scope = _scope_config(internal_cidrs, allow_dests)
    rate = _alert_rate(alert_rate)
    with _session(fmt, output, host_wide, ringbuf_pages, rules_paths, events, spec, dry_run, scope, rate,
                  metrics_addr, sinks) as (pipeline, stop):
        try:
            code = watch_loop(pipeline, list(pids), label_map, duration, stop)
        except ProbeError as exc:
            pipeline.finish()
            fail(str(exc))
    sys.exit(code)


@main.command()
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@rules_option
@events_option
@format_option
@output_option
@sink_option
@click.option("--alert-rate", "alert_rate", metavar="N/SECONDS", default=None,
              help="As for run: at most N alerts per rule and agent in SECONDS of record time.")
@click.option("--jobs", "-j", type=click.IntRange(min=0), default=1, show_default=True,
              help="Worker processes, records split by agent (0: one per CPU). The alerts are those of --jobs 1, "
                   "in the same order; a file of one agent gains nothing.")
def replay(file, rules_paths, events, fmt, output, sinks, alert_rate, jobs):
    """Run the rules over recorded JSON lines (FILE, or - for stdin) and print the alerts.

    Record with `agentwatch run --events -o FILE ...`. Time comes from the
    records, so the same file always gives the same alerts.
    """
    from .replay import ReplayError, replay as replay_records  # noqa: PLC0415

    if jobs == 0:
        jobs = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    rate = _alert_rate(alert_rate)
    ruleset = _load_rules(rules_paths)
    engine = Engine(ruleset.rules)
    with ExitStack() as stack:
        if file == "-":
            stream = sys.stdin.buffer
        else:
            try:
                stream = stack.enter_context(open(file, "rb"))
            except OSError as exc:
                fail(f"cannot open {file}: {exc.strerror}")
        writer = _rate_limited(stack, _writer(stack, fmt, output, sinks), ruleset, rate, None, live=False)
        try:
            replay_records(stream, file, engine, writer, events, jobs)
        except ReplayError as exc:
            writer.flush()
            fail(str(exc))
        except BrokenPipeError:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            sys.exit(141)


@main.group()
def rules():
    """Check, list and test detection rules."""


@rules.command()
@rules_option
def validate(rules_paths):
    """Load the rules and run their examples; one line and exit code 2 at the first problem."""
    ruleset = _load_rules(rules_paths)
    enabled = sum(r.enabled for r in ruleset.rules)
    click.echo(f"ok: {len(ruleset.rules)} rules ({enabled} enabled), {len(ruleset.macros)} macros, "
               f"{len(ruleset.lists)} lists from {len(ruleset.files)} files")


@rules.command(name="list")
@rules_option
def list_rules(rules_paths):
    """One line per rule: id, severity, kind, record types, MITRE ids, index, title.

    INDEX is what picks the records a rule is tested on (docs/rules.md, Cost):
    a field looked up by value, a field searched for text (~), or - for every
    record of its types; a sequence shows one per step.
    """
    ruleset = _load_rules(rules_paths, check_examples=False)
    rows = [("RULE", "SEVERITY", "KIND", "EVENTS", "MITRE", "INDEX", "TITLE")]
    for r in ruleset.rules:
        title = r.title if r.enabled else f"{r.title} (disabled)"
        rows.append((r.id, r.severity, r.kind, ",".join(r.all_events), ",".join(r.mitre) or "-", _index(r), title))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])


def _index(rule) -> str:
    def show(guard) -> str:
        if guard is None:
            return "-"
        return "|".join(name + ("~" if kind == "sub" else "") for kind, name, _ in guard)

    if rule.sequence is not None:
        return ";".join(show(step.guard) for step in rule.sequence.steps)
    return show(rule.guard)


@rules.command()
@rules_option
def test(rules_paths):
    """Run every rule's examples; list the ones that fail (file:line) and exit 1 if any does."""
    ruleset = _load_rules(rules_paths, check_examples=False)
    failures: list[str] = []
    examples = 0
    for rule in ruleset.rules:
        examples += len(rule.examples)
        failures += rules_loader.run_examples(rule)
    for line in failures:
        click.echo(line)
    untested = [r.id for r in ruleset.rules if not r.examples]
    click.echo(f"{examples - len(failures)}/{examples} examples hold, {len(ruleset.rules)} rules"
               + (f"; no examples: {', '.join(untested)}" if untested else ""))
    sys.exit(1 if failures else 0)


@rules.command(name="import-sigma")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--output", "-o", "output", type=click.Path(dir_okay=False), default=None,
              help="Write the rules file here (default: standard output).")
def import_sigma(paths, output):
    """Convert Sigma rules (files, or directories searched recursively) into an agentwatch rules file.

    Linux process_creation and network_connection rules are converted through pySigma; each rule
    that cannot be said with the same meaning is refused, with the reason, on stderr. The file
    written loads with --rules (its rules are checked here before it is written).
    """
    from .rules.sigma import import_sigma as convert  # noqa: PLC0415

    try:
        result = convert(list(paths))
    except RulesError as exc:
        rules_fail(exc)
    for refusal in result.refusals:
        click.echo(f"refused: {refusal}", err=True)
    text = result.yaml
    try:
        rules_loader.load_text(text, output or "<import-sigma>")
    except RulesError as exc:  # a conversion bug: say so rather than write a file that will not load
        click.echo(f"agentwatch: the converted rules do not load: {exc}", err=True)
        sys.exit(1)
    if output:
        try:
            with open(output, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as exc:
            fail(f"cannot write {output}: {exc.strerror}")
    else:
        click.echo(text, nl=False)
    click.echo(f"imported {len(result.rules)} rules, refused {len(result.refusals)}", err=True)


@rules.command()
@click.option("--markdown", is_flag=True, help="As the Markdown table of docs/rules.md.")
def fields(markdown):
    """The fields conditions and output templates may use."""
    from .rules import fields as rule_fields  # noqa: PLC0415

    if markdown:
        click.echo(rule_fields.markdown_table(), nl=False)
        return
    width = max(len(f.name) for f in rule_fields.FIELDS.values())
    for f in rule_fields.FIELDS.values():
        click.echo(f"{f.name.ljust(width)}  {f.type.ljust(9)}  {f.source.replace('`', '')}")


@main.command()
def doctor():
    """Check this machine for what agentwatch needs, and say how to fix what is missing."""
    from .doctor import run_checks  # noqa: PLC0415

    sys.exit(run_checks(sys.stdout))


# ---- fleet: the daemon and its control socket ------------------------------------------

def _load_daemon_config(path: str):
    from .fleetconfig import ConfigError, load  # noqa: PLC0415

    try:
        return load(path)
    except ConfigError as exc:
        click.echo(f"agentwatch: {exc}", err=True)  # file:line: field: what
        sys.exit(USAGE_ERROR)


@main.command()
@click.option("--config", "config_path", default="/etc/agentwatch/agentwatch.yaml", show_default=True,
              metavar="FILE", help="The daemon's config (sandbox patterns, policies, control socket).")
@click.option("--check", is_flag=True, help="Check the config (and the policies and rules it names) and exit.")
@click.option("--duration", type=float, default=None, hidden=True, help="Stop after this many seconds (tests).")
@ringbuf_option
def daemon(config_path, check, duration, ringbuf_pages):
    """Watch every sandbox (cgroup) of this host as its own agent, with episodes and a control socket."""
    config = _load_daemon_config(config_path)
    ruleset = _load_rules(config.rules)
    engine = Engine(ruleset.rules)
    if check:
        click.echo(f"ok: {config.file}: {len(config.sandboxes)} sandbox patterns, {len(config.policies)} policies, "
                   f"{len(engine.rules)} rules enabled")
        return
    from .daemon import DaemonSetupError, serve  # noqa: PLC0415

    try:
        code = serve(config, engine, ringbuf_pages, _protected, duration, ruleset.rules)
    except DaemonSetupError as exc:
        fail(str(exc))
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(141)
    sys.exit(code)


socket_option = click.option("--socket", "socket_path", default="/run/agentwatch/control.sock", show_default=True,
                             envvar="AGENTWATCH_SOCKET", metavar="PATH",
                             help="The daemon's control socket (or $AGENTWATCH_SOCKET).")


def _client_call(socket_path: str, request: dict) -> dict:
    from .harness import Client, DaemonError  # noqa: PLC0415

    try:
        with Client(socket_path) as client:
            return client.request(request)
    except DaemonError as exc:
        fail(str(exc))


@main.group()
def episode():
    """Mark episode boundaries of a sandbox (over the daemon's control socket)."""


@episode.command(name="begin")
@click.option("--sandbox", "-s", required=True, help="Sandbox name, agent id or cgroup path.")
@click.option("--episode", "episode_id", default=None, help="Episode id (default: the sandbox's name and a number).")
@label_option
@socket_option
def episode_begin(sandbox, episode_id, labels, socket_path):
    """Begin an episode now (ending the one in force); prints the daemon's reply."""
    req = {"op": "begin", "sandbox": sandbox, "labels": _labels(labels)}
    if episode_id is not None:
        req["episode"] = episode_id
    click.echo(orjson_line(_client_call(socket_path, req)))


@episode.command(name="end")
@click.option("--sandbox", "-s", required=True, help="Sandbox name, agent id or cgroup path.")
@socket_option
def episode_end(sandbox, socket_path):
    """End the episode in force; prints its summary and alerts once they are all in."""
    click.echo(orjson_line(_client_call(socket_path, {"op": "end", "sandbox": sandbox})))


def orjson_line(obj: dict) -> str:
    import orjson  # noqa: PLC0415

    return orjson.dumps(obj).decode()


@main.command()
@socket_option
@click.option("--json", "as_json", is_flag=True, help="The daemon's reply as one JSON object.")
def status(socket_path, as_json):
    """The daemon's sandboxes, their episode in force, events, alerts and losses."""
    reply = _client_call(socket_path, {"op": "status"})
    if as_json:
        click.echo(orjson_line(reply))
        return
    from tabulate import tabulate  # noqa: PLC0415

    from .records import safe_text  # noqa: PLC0415

    def cell(value) -> str:
        return safe_text(str(value).encode("utf-8", "surrogatepass")) if value is not None else "-"

    rows = []
    for sb in reply["sandboxes"]:
        ep = sb.get("episode") or {}
        rows.append([cell(sb["name"]), cell(sb["runtime"]), cell(sb["cgroup"]), cell(ep.get("id")),
                     sb["episodes"], sb["events"], sb["alerts"], cell(sb.get("last_alert")), cell(sb.get("policy")),
                     cell(sb.get("on_alert"))])
    click.echo(tabulate(rows, headers=["SANDBOX", "RUNTIME", "CGROUP", "EPISODE", "EPISODES", "EVENTS", "ALERTS",
                                       "LAST ALERT", "POLICY", "ON ALERT"]))
    d = reply["daemon"]
    lost = {k: v for k, v in d["lost"].items() if v}
    click.echo(f"\ndaemon pid {d['pid']}, up {d['uptime_s']:.0f} s, {d['records']} records, "
               f"lost {sum(lost.values())}{' ' + orjson_line(lost) if lost else ''}, "
               f"refused {d['control_refused']} control connections")


if __name__ == "__main__":
    main()
