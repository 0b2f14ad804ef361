"""The Vagrantfile parses and provisions with scripts/setup.sh.

Needs no root, no provider (VirtualBox/libvirt), no box and no network:
`vagrant validate --ignore-provider` only loads the Vagrantfile. Without
--ignore-provider, vagrant fails with "No usable default provider" on a machine
that has vagrant but no provider installed (CI installs it --no-install-recommends).
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VAGRANTFILE = REPO / "Vagrantfile"


def test_vagrant_validate(tmp_path):
    vagrant = shutil.which("vagrant")
    if vagrant is None:
        pytest.skip("vagrant binary not installed (scripts/setup.sh installs it where apt has it)")
    env = dict(
        os.environ,
        VAGRANT_CHECKPOINT_DISABLE="1",  # no version check over the network
        VAGRANT_BOX_UPDATE_CHECK_DISABLE="1",
        VAGRANT_NO_PLUGINS="1",  # same result with or without vagrant-libvirt etc.
        VAGRANT_HOME=str(tmp_path / "vagrant.d"),  # works for any user, leaves ~ alone
        VAGRANT_DOTFILE_PATH=str(tmp_path / "dot-vagrant"),  # no .vagrant/ in the repo
        VAGRANT_CWD=str(REPO),
    )
    env.pop("VAGRANT_DEFAULT_PROVIDER", None)
    proc = subprocess.run(
        [vagrant, "validate", "--ignore-provider"],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, f"vagrant validate failed:\n{proc.stdout}\n{proc.stderr}"
    assert "validated successfully" in proc.stdout


def test_vagrantfile_provisions_with_setup_sh():
    text = VAGRANTFILE.read_text()
    code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    assert re.search(r'config\.vm\.box\s*=\s*"bento/ubuntu-24\.04"', code)
    prov = re.search(r'config\.vm\.provision\s+"shell",(.*)', code)
    assert prov, "no shell provisioner"
    assert "privileged: true" in prov.group(1)
    assert "/vagrant/scripts/setup.sh" in prov.group(1)
    assert (REPO / "scripts" / "setup.sh").is_file()
