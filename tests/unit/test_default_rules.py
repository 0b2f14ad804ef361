"""The contract of the default rules (rules/*.yaml), checked without the kernel.

Every rule carries a MITRE technique and examples that must and must not match (the
loader runs them); a corpus of everyday developer and ML commands raises nothing of
medium severity or above. tests/scenarios prove the same rules on the real tools.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from tracer.rules import Engine
from tracer.rules import loader

RULES = Path(__file__).resolve().parents[2] / "rules"


@pytest.fixture(scope="module")
def ruleset():
    return loader.load([RULES])  # examples checked: a failing one raises RulesError


def test_every_rule_has_a_technique_and_both_kinds_of_example(ruleset):
    assert len(ruleset.rules) >= 40
    for rule in ruleset.rules:
        assert rule.mitre, f"{rule.id}: no MITRE technique in its tags"
        kinds = {ex.expect for ex in rule.examples}
        assert kinds == {True, False}, f"{rule.id}: needs examples that match and that do not"


def test_every_example_holds(ruleset):
    for rule in ruleset.rules:
        assert loader.run_examples(rule) == [], rule.id


def test_each_behaviour_of_the_issue_has_rules(ruleset):
    techniques = {t for rule in ruleset.rules for t in rule.mitre}
    assert {"T1572", "T1090", "T1059.004", "T1496", "T1046", "T1552.005", "T1036.009"} <= techniques


# What coding and training agents run all day. None of it may page anyone.
EVERYDAY = [
    "curl -L http://example.com/install.sh", "curl -fsSL https://get.docker.com -o get-docker.sh",
    "wget -q http://example.com/x.tgz", "git clone git@github.com:org/repo.git", "git push origin main",
    "ssh -T git@github.com", "scp -r dir host:/tmp", "rsync -avz -e ssh src/ host:/dst",
    "ssh -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null host uptime",
    "ssh -i key.pem -o ConnectTimeout=5 ubuntu@10.0.0.5 'sudo systemctl restart app'",
    "ssh -A host", "ssh -t host top", "ssh -N -f -M -S /tmp/ctl host", "ssh host grep -R 8080 /etc",
    "/usr/bin/ssh -x -oPermitLocalCommand=no -oClearAllForwardings=yes -oRemoteCommand=none -oRequestTTY=no "
    "-oForwardAgent=no -l root -s -- 198.18.0.1 sftp",
    "python3 -m http.server 8000", "python3 -m pytest -x -q tests/", "python3 manage.py runserver 0.0.0.0:8000",
    "npx vite --host 0.0.0.0 --port 5173", "uvicorn app:app --reload --port 8080", "docker run -p 8080:80 nginx",
    "kubectl port-forward svc/web 8080:80", "nc -zv localhost 5432", "nc -l 9999", "socat - TCP:example.com:80",
    "pip install -r requirements.txt", "pip install --index-url http://127.0.0.1:3141/simple pkg",
    "make -j8", "gcc -o a a.c", "cargo run -- --port 3000", "grep -R 'connect(' src", "grep -rn tunnel .",
    "python3 -c 'import socket; s=socket.create_connection((\"pypi.org\",443)); print(s)'",
    "python3 -c 'import socket, subprocess; print(socket.gethostname(), subprocess.check_output([\"uname\"]))'",
    "jupyter notebook --ip 0.0.0.0 --port 8888 --no-browser", "redis-server --port 6379", "ping -c1 8.8.8.8",
    "dig example.com", "host -t MX example.com", "openssl s_client -connect example.com:443", "tmux new -d -s dev",
    "sysctl -a", "hugo server -D", "java -jar app.jar --server.port=8080", "curl -x http://proxy:3128 http://x",
    "torchrun --nproc_per_node 8 train.py", "python train.py --algo ppo --lr 3e-4", "nvidia-smi",
    "ray start --head --port 6379", "deepspeed --num_gpus 8 train.py", "vllm serve model --port 8000",
    "tensorboard --logdir runs --port 6006", "cat ~/.ssh/authorized_keys", "tar -a -cf x.tar.gz dir",
    "bash -c 'echo > /dev/tcp/127.0.0.1/8080'", "sh -c 'ls -la ~/.ssh'",
]


@pytest.mark.parametrize("cmd", EVERYDAY)
def test_everyday_commands_raise_nothing_medium_or_above(ruleset, cmd):
    engine = Engine(ruleset.rules)
    record = loader.example_record({"type": "exec", "process": {"argv": shlex.split(cmd)}}, "exec", 0)
    loud = [a["rule"] for a in engine.evaluate(record) if a["severity"] in ("medium", "high", "critical")]
    assert not loud, f"{cmd!r} raised {loud}"
