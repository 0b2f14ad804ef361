"""Every record the real pipeline writes validates against docs/event.schema.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jsonschema

SCHEMA = json.loads((Path(__file__).parents[2] / "docs" / "event.schema.json").read_text())


def test_records_of_a_real_run_match_the_schema(trace, tmp_path):
    hostile = tmp_path / "x\x1b[31m\nname"
    hostile.write_text("#!/bin/sh\nexit 0\n")
    hostile.chmod(0o755)
    script = (
        f"/bin/true 'a\nb' $(printf '\\377'); /nonexistent/x; '{hostile}' ;"
        f"{sys.executable} -c 'import socket; socket.socket().connect_ex((\"127.0.0.1\", 9))';"
        "(setsid sleep 0.2 &); exit 3"
    )
    t = trace(["sh", "-c", script], labels={"run": "schema"})
    validator = jsonschema.Draft202012Validator(SCHEMA)
    for record in t.records:
        errors = list(validator.iter_errors(record))
        assert not errors, (record, [e.message for e in errors])
    kinds = {r.get("type") or r.get("status") for r in t.records}
    assert {"exec", "exit", "fork", "connect", "agent_started", "root_exited", "agent_finished"} <= kinds
