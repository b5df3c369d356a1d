"""The compose stack (docker/docker-compose.yml) driven with podman and podman-compose.

What `make compose-test` needs, in the order it needs it: the Debian base image (made with
debootstrap when absent, docker/podman/base-image.sh), the images (``podman build`` of each
service's Containerfile with the layer cache, so a warm run rebuilds nothing), the stack
up, health, commands inside containers, and a teardown by name of every container,
network and volume of the project, also after a failure.

Rules of the workplace kept here: no traffic from the host to container addresses (the
exchange runs inside containers with ``podman exec``), the bridge network is the one the
compose file declares (172.29.x) and is removed at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ruamel.yaml import YAML

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
COMPOSE_FILE = DOCKER / "docker-compose.yml"
CONTAINERS_CONF = DOCKER / "podman" / "containers.conf"
BASE_SCRIPT = DOCKER / "podman" / "base-image.sh"
LOCAL_BASE = "localhost/debian:bookworm"
# pip inside the gateway build must trust what the host trusts (a TLS-inspecting proxy's
# CA, for one): the host's bundle is bind-mounted for the build only, never copied in.
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
BUILD_CA_FILE = "/run/build-ca.crt"


class StackError(RuntimeError):
    """A step of the stack failed; the message says which and shows its output."""


def podman_environment() -> dict[str, str]:
    """The environment for podman and podman-compose: the repository's containers.conf
    unless the user has one, and images in Docker format (OCI drops HEALTHCHECK)."""
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", str(CONTAINERS_CONF))
    env["BUILDAH_FORMAT"] = "docker"
    return env


def podman_compose() -> str:
    """podman-compose from the venv (PyPI; Debian bookworm's 1.0.3 ignores per-network
    ipv4_address and ipam), else from PATH."""
    beside = Path(sys.executable).parent / "podman-compose"
    return str(beside) if beside.exists() else "podman-compose"


def podman_unusable() -> str:
    """Why podman cannot run here ("" when it can): the only reason to skip the test."""
    if shutil.which("podman") is None:
        return "podman is not installed (`make compose-test` installs it from Debian)"
    if shutil.which(podman_compose()) is None:
        return "podman-compose is not installed (`make compose-test` installs it from PyPI)"
    info = subprocess.run(["podman", "info", "--format", "{{.Host.OCIRuntime.Name}}"],
                          capture_output=True, text=True, env=podman_environment(), timeout=60)
    if info.returncode != 0:
        return f"podman cannot run here: {info.stderr.strip()[-500:]}"
    return ""


def run(cmd: list[str], *, timeout: float = 120, check: bool = True,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                env={**podman_environment(), **(env or {})}, cwd=REPO)
    except subprocess.TimeoutExpired as exc:
        raise StackError(f"{' '.join(cmd)} did not finish in {timeout:.0f}s") from exc
    if check and result.returncode != 0:
        raise StackError(f"{' '.join(cmd)} failed ({result.returncode}):\n"
                         f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


@dataclass
class ComposeStack:
    project: str
    base_image: str = field(default_factory=lambda: os.environ.get("BASE_IMAGE", LOCAL_BASE))
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.compose = YAML(typ="safe").load(COMPOSE_FILE.read_text())

    # ------------------------------------------------------------------ names

    @property
    def network_names(self) -> list[str]:
        return [f"{self.project}_{name}" for name in self.compose["networks"]]

    @property
    def volume_names(self) -> list[str]:
        return [f"{self.project}_{name}" for name in self.compose["volumes"]]

    def container(self, service: str) -> str:
        """The container of ``service`` (podman-compose and docker compose name them
        differently; both label them with project and service)."""
        found = run(["podman", "ps", "-a", "--format", "{{.Names}}",
                     "--filter", f"label=io.podman.compose.project={self.project}",
                     "--filter", f"label=com.docker.compose.service={service}"]).stdout.split()
        if len(found) != 1:
            raise StackError(f"expected one container for service {service}, found {found}")
        return found[0]

    def containers(self) -> list[str]:
        return run(["podman", "ps", "-a", "--format", "{{.Names}}", "--filter",
                    f"label=io.podman.compose.project={self.project}"]).stdout.split()

    # ------------------------------------------------------------------ images

    def ensure_base(self) -> None:
        if run(["podman", "image", "exists", self.base_image], check=False).returncode == 0:
            return
        if self.base_image != LOCAL_BASE:
            raise StackError(f"base image {self.base_image} (BASE_IMAGE) is not present")
        run([str(BASE_SCRIPT), LOCAL_BASE], timeout=600)

    def build(self) -> None:
        """Each image the compose file builds, once, through podman's layer cache."""
        built: set[str] = set()
        for service in self.compose["services"].values():
            image, spec = service.get("image"), service.get("build")
            if spec is None or image in built:
                continue
            cmd = ["podman", "build", "--layers", "--format", "docker", "-t", image,
                   "-f", str((DOCKER / spec["context"] / spec["dockerfile"]).resolve()),
                   "--build-arg", f"BASE={self.base_image}"]
            if HOST_CA_BUNDLE.is_file():
                cmd += ["--volume", f"{HOST_CA_BUNDLE}:{BUILD_CA_FILE}:ro",
                        "--build-arg", f"BUILD_CA_FILE={BUILD_CA_FILE}"]
            run([*cmd, str((DOCKER / spec["context"]).resolve())], timeout=900)
            built.add(image)

    # ------------------------------------------------------------------ life cycle

    def compose_cmd(self, *args: str) -> list[str]:
        return [podman_compose(), "-p", self.project, "-f", str(COMPOSE_FILE), *args]

    def compose_run(self, *args: str) -> None:
        run(self.compose_cmd(*args), timeout=300, env={"BASE_IMAGE": self.base_image})

    def up(self) -> None:
        self.compose_run("up", "-d")

    def container_id(self, service: str) -> str:
        return run(["podman", "inspect", "-f", "{{.Id}}", self.container(service)]).stdout

    def wait_certs(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        name = self.container("certs")
        while time.monotonic() < deadline:
            state = json.loads(run(["podman", "inspect", name]).stdout)[0]["State"]
            if state["Status"] == "exited":
                if state["ExitCode"] != 0:
                    raise StackError(f"certs failed:\n{self.logs('certs')}")
                return
            time.sleep(0.5)
        raise StackError("certs did not finish")

    def healthy(self, service: str) -> bool:
        """Runs the service's health check now (podman runs them on a timer only under
        systemd) and answers whether it passed."""
        return run(["podman", "healthcheck", "run", self.container(service)],
                   check=False, timeout=60).returncode == 0

    def wait_healthy(self, services: list[str], timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        waiting = list(services)
        while waiting and time.monotonic() < deadline:
            waiting = [s for s in waiting if not self.healthy(s)]
            if waiting:
                time.sleep(1)
        if waiting:
            raise StackError(f"not healthy after {timeout:.0f}s: {waiting}\n" + "\n".join(
                f"--- {s} ---\n{self.logs(s)[-3000:]}" for s in waiting))

    def exec(self, service: str, *cmd: str, timeout: float = 120,
             check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(["podman", "exec", self.container(service), *cmd], timeout=timeout,
                   check=check)

    def logs(self, service: str) -> str:
        try:
            result = run(["podman", "logs", self.container(service)], check=False)
        except StackError as exc:
            return str(exc)
        return result.stdout + result.stderr

    def down(self) -> list[str]:
        """Remove the project's containers, networks and volumes by name; returns what
        could not be removed (empty when all went)."""
        left = []
        for _attempt in range(3):  # one restarting under its restart policy may need two
            containers = self.containers()
            if not containers:
                break
            # -v: also the anonymous volumes of the images' VOLUMEs (the certs service's)
            run(["podman", "rm", "-f", "-v", "-t", "5", *containers], check=False,
                timeout=120)
        left += self.containers()
        for name in self.network_names:
            if run(["podman", "network", "exists", name], check=False).returncode == 0:
                run(["podman", "network", "rm", "-f", name], check=False)
                if run(["podman", "network", "exists", name], check=False).returncode == 0:
                    left.append(name)
        for name in self.volume_names:
            if run(["podman", "volume", "exists", name], check=False).returncode == 0:
                run(["podman", "volume", "rm", "-f", name], check=False)
                if run(["podman", "volume", "exists", name], check=False).returncode == 0:
                    left.append(name)
        return left
