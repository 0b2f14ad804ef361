"""Labels from the container runtime, where it can be asked: Docker's Engine API.

A sandbox whose runtime cannot be asked (no socket, the SDK missing, the
daemon down or slow) still gets an agent, named from its cgroup path; the
reason is kept so that `agentwatch status` and the records can say why.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

LOOKUP_TIMEOUT_S = 2  # the daemon's drain waits on this: never long


@dataclass
class ContainerInfo:
    name: str
    image: str
    labels: dict[str, str] = field(default_factory=dict)


class DockerRuntime:
    """Docker's metadata for a container id, through the `docker` SDK over the unix socket."""

    def __init__(self, socket: str = "/var/run/docker.sock") -> None:
        self.socket = socket
        self.reason: str | None = None
        self._client = None

    def _connect(self):
        if self._client is not None:
            return self._client
        if not os.path.exists(self.socket):
            self.reason = f"no Docker API socket at {self.socket}"
            return None
        try:
            import docker  # noqa: PLC0415  (optional at run time: only hosts with Docker need it)
        except ImportError:
            self.reason = "the docker Python package is not installed"
            return None
        self._client = docker.DockerClient(base_url=f"unix://{self.socket}", timeout=LOOKUP_TIMEOUT_S)
        return self._client

    def inspect(self, container_id: str) -> ContainerInfo | None:
        client = self._connect()
        if client is None:
            return None
        try:
            attrs = client.api.inspect_container(container_id)
        except Exception as exc:  # noqa: BLE001  (requests, docker.errors, socket: any means "cannot ask")
            self.reason = f"docker inspect {container_id[:12]}: {type(exc).__name__}: {str(exc)[:200]}"
            return None
        self.reason = None
        config = attrs.get("Config") or {}
        labels = config.get("Labels") or {}
        return ContainerInfo(
            name=(attrs.get("Name") or "").lstrip("/") or container_id[:12],
            image=str(config.get("Image") or ""),
            labels={str(k): str(v) for k, v in labels.items()},
        )

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # noqa: BLE001
                pass
            self._client = None
