"""SyslogSink against a real rsyslogd (tests/scenarios/rsyslog.py): what rsyslog parses is what the sink meant.

rsyslogd runs with inputs of its own (two unix sockets in tmp: one read as a distribution reads
/dev/log, one with the RFC 5424 parser; imudp and imtcp on 127.0.0.1) and writes what it parsed of
each message (app-name, procid, msgid, facility, severity, time, hostname, msg) as JSON lines. For
each transport the sink's records must come back field for field, the msg being the JSON the sink
encoded; the TCP sink must get every record through an rsyslogd restart, in order; and a message
over rsyslog's maxMessageSize shows what each transport does with it.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import socket
import time

import orjson
import pytest

from rsyslog import RSYSLOGD, Rsyslogd
from tracer.sinks import SyslogSink, syslog_timestamp

if RSYSLOGD is None:
    if os.environ.get("AGENTWATCH_REQUIRE_KERNEL") == "1":
        raise RuntimeError("rsyslogd is missing: `make setup` installs Debian's rsyslog")
    pytest.skip("rsyslogd is not installed (scripts/setup.sh installs it)", allow_module_level=True)

HOST = "aw-test-host"
LOCAL3 = 19
MAX = 8192  # the maxMessageSize rsyslogd runs with here (rsyslog's default, written out in its config)

PROCESS = {"pid": 5000003, "ppid": 5000002, "uid": 1000, "comm": "bash", "exe": "/bin/bash", "argv": ["bash", "-i"],
           "argv_truncated": False, "key": "5000003:10200",
           "ancestry": [{"pid": 5000002, "comm": "agent", "exe": "/usr/bin/ssh"},
                        {"pid": 5000001, "comm": "agent", "exe": "/usr/bin/agent"}]}
AGENT = {"id": "agent-rsyslog", "root_pid": 5000001, "labels": {"task": "42"}}


def connect(i: int) -> dict:
    return {"kind": "event", "type": "connect", "time": f"2026-12-03T07:52:56.{i:09d}Z", "agent": AGENT,
            "process": PROCESS, "seq": i,
            "network": {"family": "ipv4", "protocol": "tcp", "saddr": None, "sport": None, "daddr": "198.51.100.7",
                        "dport": 4444, "v4_mapped": False, "result": "ok", "retval": 0, "repeats": 0,
                        "scope": "external", "allowlisted": False}}


def records(n: int) -> list[dict]:
    """An alert (high), an event, a record with awkward strings, then plain connects: n in all."""
    alert = {"kind": "alert", "rule": "reverse-shell-connect-then-exec", "severity": "high",
             "title": "A shell connects out, then becomes an interactive shell", "tags": ["reverse_shell"],
             "time": "2026-12-03T07:52:56.892377380Z", "agent": AGENT, "process": PROCESS, "seq": 0,
             "message": "bash (pid 5000003) became a shell after connecting out: bash -i", "action": "none",
             "evidence": [connect(0)]}
    odd = {"kind": "event", "type": "exec", "time": "2026-12-03T07:52:57Z", "agent": AGENT, "seq": 2,
           "process": {**PROCESS, "comm": "we ird", "exe": "/tmp/dir with spaces/x",
                       "argv": ["sh", "-c", "echo \"double\" 'single' \\back $HOME", "naïve café 日本語 🚀 \u2028",
                                "two\nlines\r\nand\ttab", "<14>1 2026-01-01T00:00:00Z fake app - - - header",
                                "] [sd@1 x=\"y\"] -", "\x7f\x01 controls"]},
           "line\nbreak key": "value"}
    out = [alert, connect(1), odd]
    out += [connect(i) for i in range(3, n)]
    return out


@pytest.fixture(scope="module")
def rsyslog(tmp_path_factory):
    d = Rsyslogd(tmp_path_factory.mktemp("rsyslog"))
    try:
        d.start()
        yield d
    finally:
        d.stop()


def sink_for(rs: Rsyslogd, proto: str, **kw) -> SyslogSink:
    """unix: the sink's default for a unix socket (syslog(3)'s syntax); unix5424: rfc5424=1 to the socket
    read by the RFC 5424 parser; udp, tcp: RFC 5424 (their default)."""
    if proto == "unix5424":
        kw["rfc5424"] = True
    return SyslogSink(rs.target(proto), **kw)


def text(m: dict) -> str:
    """msg without the space rsyslog keeps after "TAG[PID]:" in syslog(3)'s syntax."""
    return m["msg"][1:] if m["msg"].startswith(" ") else m["msg"]


def delivered(sink: SyslogSink, timeout: float = 10.0) -> dict:
    assert sink.wait_idle(timeout), sink.stats()
    sink.close(1)
    return sink.stats()


@pytest.mark.parametrize("proto", ["unix", "unix5424", "udp", "tcp"])
def test_rsyslog_parses_every_field(rsyslog, proto):
    app = f"aw-fields-{proto}"
    # 60: a burst UDP on loopback cannot lose (the datagrams fit rsyslog's socket buffer unread)
    recs = records(60)
    sink = sink_for(rsyslog, proto, app_name=app, hostname=HOST, facility="local3")
    t0 = datetime.datetime.now(datetime.timezone.utc)
    for r in recs:
        sink.submit(r)
    st = delivered(sink)
    assert (st["delivered"], st["dropped"], st["failed"]) == (len(recs), 0, 0), st

    got = rsyslog.wait_messages(app, len(recs))
    assert len(got) == len(recs), f"{len(got)} of {len(recs)} arrived: {rsyslog.log()[-1000:]}"
    assert [json.loads(m["msg"]) for m in got] == recs  # every record as it was, in order
    assert [text(m).encode() for m in got] == [orjson.dumps(r) for r in recs]  # byte for byte
    assert {(m["app"], m["procid"], m["sd"], int(m["facility"])) for m in got} == {
        (app, str(os.getpid()), "-", LOCAL3)}
    assert [int(m["severity"]) for m in got[:3]] == [3, 6, 6]  # alert high, events info
    assert {m["input"] for m in got} == {"imudp" if proto == "udp" else "imtcp" if proto == "tcp" else "imuxsock"}
    if proto == "unix":
        # syslog(3)'s syntax has no MSGID and no hostname; as /dev/log is read by default, rsyslog gives the
        # time of receipt and its own host name (the record's own time is in the JSON)
        assert {(m["msgid"], m["host"]) for m in got} == {("-", socket.gethostname().split(".")[0])}
        assert all(m["msg"].startswith(" ") for m in got)  # rsyslog keeps the space after "TAG[PID]:"
        times = {datetime.datetime.fromisoformat(m["time"]) for m in got}
        assert all(abs((t - t0).total_seconds()) < 60 for t in times), times
        return
    assert [m["msgid"] for m in got[:3]] == ["alert", "connect", "exec"]
    assert {m["host"] for m in got} == {HOST}
    assert [m["time"] for m in got] == [syslog_timestamp(r["time"]) for r in recs]  # cut to microseconds
    assert got[0]["time"] == "2026-12-03T07:52:56.892377Z" and got[2]["time"] == "2026-12-03T07:52:57Z"


def test_rfc5424_is_misread_where_dev_log_is_read_by_default(rsyslog):
    """Why a unix socket gets syslog(3)'s syntax: rsyslog's imuxsock with its defaults (as a distribution
    reads /dev/log; journald reads only that syntax too, systemd issue #19251) takes "<PRI>1 ..." as a
    legacy message: app-name "1", the whole RFC 5424 header left in msg."""
    r = {**records(3)[1], "case": "misread"}
    sink = SyslogSink(rsyslog.target("unix"), app_name="aw-misread", hostname=HOST, rfc5424=True)
    sink.submit(r)
    delivered(sink)
    payload = orjson.dumps(r).decode()
    deadline = time.monotonic() + 10
    while not (got := [m for m in rsyslog.messages() if m["msg"].endswith(payload)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    (m,) = got  # one message, under the wrong app-name
    assert (m["app"], m["msgid"]) == ("1", "-")
    assert m["msg"].startswith(f" {syslog_timestamp(r['time'])} {HOST} aw-misread {os.getpid()} connect - ")


@pytest.mark.parametrize("proto", ["unix", "tcp"])
def test_an_encoder_with_line_breaks_stays_one_message(rsyslog, proto):
    app = f"aw-indent-{proto}"
    recs = records(5)
    sink = sink_for(rsyslog, proto, app_name=app, hostname=HOST,
                    encode=lambda r: orjson.dumps(r, option=orjson.OPT_INDENT_2))
    for r in recs:
        sink.submit(r)
    delivered(sink)
    got = rsyslog.wait_messages(app, len(recs))
    assert [json.loads(m["msg"]) for m in got] == recs  # line breaks became spaces: still the JSON


def test_bom_is_kept_in_msg_by_rsyslog(rsyslog):
    """bom=1 sends MSG-UTF8 (RFC 5424 6.4); rsyslog keeps the BOM as the first character of msg, so a
    consumer of msg must strip it before parsing the JSON: why bom is off by default."""
    app = "aw-bom"
    r = records(3)[2]
    sink = sink_for(rsyslog, "unix5424", app_name=app, bom=True)
    sink.submit(r)
    delivered(sink)
    (m,) = rsyslog.wait_messages(app, 1)
    assert m["msg"].startswith("\ufeff") and json.loads(m["msg"][1:]) == r


def test_tcp_sink_survives_an_rsyslogd_restart(tmp_path):
    d = Rsyslogd(tmp_path)
    app = "aw-restart"
    sink = SyslogSink(d.target("tcp"), app_name=app, hostname=HOST, retry_base_s=0.05, retry_cap_s=0.5)
    try:
        d.start()
        recs = records(150)
        for r in recs[:50]:
            sink.submit(r)
        assert sink.wait_idle(10)
        assert len(d.wait_messages(app, 50)) == 50

        d.stop()  # the sink's connection is now closed by its peer
        for r in recs[50:]:
            sink.submit(r)
        deadline = time.monotonic() + 10
        while sink.stats()["retries"] < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        down = sink.stats()
        assert down["failed"] > 0 and down["retries"] > 0, down
        assert down["queued"] == 100 and down["delivered"] == 50, down  # nothing sent into the dead connection

        d.start()  # same port, same output file
        assert sink.wait_idle(15), sink.stats()
        got = d.wait_messages(app, len(recs))
        assert [json.loads(m["msg"]) for m in got] == recs  # all of them, once, in order
        st = sink.stats()
        assert st["delivered"] == len(recs) and st["dropped"] == 0, st
        assert st["failed"] > 0 and st["retries"] > 0, st
        assert "Connection refused" in (st["last_error"] or ""), st
    finally:
        sink.close(1)
        d.stop()


# --- a message over rsyslog's maxMessageSize -------------------------------------------------------


def big(seq: int, size: int, fill: str) -> dict:
    return {"kind": "event", "type": "exec", "time": "2026-12-03T07:52:58Z", "seq": seq, "blob": fill * size}


@pytest.mark.parametrize("proto,kernel_limit", [("unix", 400_000), ("unix5424", 400_000), ("udp", 70_000)])
def test_oversize_datagram(rsyslog, proto, kernel_limit):
    """Datagrams: one over maxMessageSize is cut to maxMessageSize bytes by rsyslog (the rest of the
    datagram is gone, the JSON broken, rsyslog says nothing); one the kernel refuses (EMSGSIZE: past the
    unix socket's send buffer, past 65507 bytes for UDP) is counted by the sink as too_large. The
    records after them arrive whole."""
    app = f"aw-oversize-{proto}"
    sink = sink_for(rsyslog, proto, app_name=app, hostname=HOST)
    over, refused, after = big(1, 20_000, "x"), big(2, kernel_limit, "y"), big(3, 10, "z")
    for r in (over, refused, after):
        sink.submit(r)
    st = delivered(sink)
    assert st["dropped_by_reason"] == {"too_large": 1} and st["delivered"] == 2, st

    got = rsyslog.wait_messages(app, 2)
    assert len(got) == 2, got
    message = sink.message(over)
    payload = orjson.dumps(over)
    header = len(message) - len(payload)
    assert text(got[0]).encode() == payload[:MAX - header]  # cut at maxMessageSize, header included
    with pytest.raises(json.JSONDecodeError):
        json.loads(got[0]["msg"])
    assert json.loads(got[1]["msg"]) == after


def test_oversize_tcp_frame(rsyslog):
    """TCP (octet counting): rsyslog logs "received oversize message ... truncating", keeps the first
    maxMessageSize bytes as the message, and then parses the REST of the frame as further messages
    of up to maxMessageSize bytes each (imtcp's discardTruncatedMsg is off by default), with no
    syslog header: junk app-names, the record's tail as their text. The sink cannot know (no
    acknowledgement): it counts the record delivered. Framing holds: the next record arrives whole."""
    app = "aw-oversize-tcp"
    sink = SyslogSink(rsyslog.target("tcp"), app_name=app, hostname=HOST)
    over, after = big(1, 20_000, "Q"), big(2, 10, "z")
    sink.submit(over)
    sink.submit(after)
    st = delivered(sink)
    assert st["delivered"] == 2 and st["dropped"] == 0, st

    got = rsyslog.wait_messages(app, 2)
    assert len(got) == 2, got
    message = sink.message(over)
    payload = orjson.dumps(over)
    assert got[0]["msg"].encode() == payload[:MAX - (len(message) - len(payload))]
    assert json.loads(got[1]["msg"]) == after
    junk = [m for m in rsyslog.messages() if m["input"] == "imtcp" and not m["app"].startswith("aw-")]
    assert len(junk) == math.ceil((len(message) - MAX) / MAX), junk
    assert all(set(m["app"]) == {"Q"} for m in junk)
    assert junk[-1]["msg"].endswith(payload[-40:].decode())  # the record's last bytes, as a message of their own
    assert "received oversize message" in rsyslog.log()
