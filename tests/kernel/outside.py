"""A link inside a test's network namespace that stands for the outside world."""

from __future__ import annotations

import subprocess


def add_outside(netns: str) -> None:
    """198.18.0.1/15 (stands for the internet) and fd99::1/64 on a veth pair inside the netns.

    Both ends stay in the namespace and nobody answers on them, which is all
    a datagram needs. They go away with the namespace.
    """
    for cmd in (
        "link add aw0 type veth peer name aw1",
        "addr add 198.18.0.1/15 dev aw0",
        "addr add fd99::1/64 dev aw0 nodad",
        "link set aw1 up",
        "link set aw0 up",
    ):
        subprocess.run(["ip", "-n", netns, *cmd.split()], check=True)
