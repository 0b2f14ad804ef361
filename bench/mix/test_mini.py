"""A tiny test suite the agent-like mix runs with pytest (copied to a scratch folder)."""

import json
import subprocess

import pytest


def slugify(text: str) -> str:
    return "-".join("".join(c.lower() if c.isalnum() else " " for c in text).split())


@pytest.mark.parametrize("text,slug", [("Hello World", "hello-world"), ("a--b", "a-b"), ("", "")])
def test_slugify(text, slug):
    assert slugify(text) == slug


def test_json_roundtrip(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps({"k": [1, 2, 3]}))
    assert json.loads(path.read_text())["k"] == [1, 2, 3]


def test_subprocess():
    assert subprocess.run(["/bin/true"]).returncode == 0
