"""A CUDA MPS control daemon for the length of a sweep (`resources.mps`).

Without MPS, processes that share a card take turns on it; as clients of one MPS server their kernels run
side by side. Trials become clients through the daemon's pipe folder, which reaches their workers in
their runtime environment, so it works whoever started the local Ray.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from typing import TYPE_CHECKING

from lrkv.kernels import ConfigError

from .study import SweepError

if TYPE_CHECKING:
    from .spec import SweepSpec

log = logging.getLogger(__name__)

CONTROL = "nvidia-cuda-mps-control"
ANSWER_SECONDS = 20  # the daemon may wait on clients that have not exited yet


def control_path() -> str:
    """The control program, or the spec error that names the field (before anything is written)."""
    control = shutil.which(CONTROL)
    if control is None:
        raise ConfigError("resources.mps", f"{CONTROL} on PATH (CUDA MPS), or mps: false", "not found")
    return control


def check_mps(spec: SweepSpec, address: str | None) -> None:
    """`resources.mps` starts a daemon beside a local Ray only: a cluster's nodes run their own."""
    if spec.resources.mps:
        if address:
            raise SweepError("resources.mps", "false on a cluster (start MPS on its nodes)", True)
        control_path()


class MpsDaemon:
    def __init__(self, control: str, env: dict[str, str]):
        self.control, self.env = control, env
        self.servers: list[str] = []
        self.running = True

    @classmethod
    def start(cls) -> MpsDaemon:
        control = control_path()
        # Short /tmp paths: the pipe folder holds UNIX sockets, whose paths are limited to 108 bytes.
        env = {f"CUDA_MPS_{name.upper()}_DIRECTORY": tempfile.mkdtemp(prefix=f"lrkv-mps-{name}-")
               for name in ("pipe", "log")}
        subprocess.run([control, "-d"], env={**os.environ, **env}, check=True, timeout=ANSWER_SECONDS)
        return cls(control, env)

    def ask(self, command: str) -> str:
        try:
            return subprocess.run([self.control], input=command + "\n", env={**os.environ, **self.env},
                                  capture_output=True, text=True, timeout=ANSWER_SECONDS).stdout
        except subprocess.TimeoutExpired:
            log.warning("CUDA MPS: no answer to %r within %d s", command, ANSWER_SECONDS)
            return ""

    def stop(self) -> None:
        """Note the servers that ran (one per card used), then stop the daemon; bounded, never hangs."""
        if self.running:
            self.running = False
            self.servers = self.ask("get_server_list").split()
            self.ask("quit")
