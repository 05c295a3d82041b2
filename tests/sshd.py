"""A private sshd on 127.0.0.1 for the remote tests and the ssh benchmark.

Started as the current user on a free port, with host and user keys made in a
temporary directory; the client options go in one ``ssh`` command line (``rsh``), so
nothing reads or writes ``~/.ssh``. ``PATH`` on the far side is this process's, so the
agent found there is the hsync under test.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import time

SSHD = "/usr/sbin/sshd"


def available() -> str | None:
    """None when a private sshd can run here, else why not."""
    if not os.path.exists(SSHD):
        return f"{SSHD} is not installed (apt-get install openssh-server)"
    if shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        return "the ssh client is not installed (apt-get install openssh-client)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Sshd:
    def __init__(self, workdir: str, path: str | None = None) -> None:
        self.dir = workdir
        os.makedirs(workdir, exist_ok=True)
        os.makedirs("/run/sshd", exist_ok=True)
        self.port = _free_port()
        for name in ("host_ed25519", "user_ed25519"):
            key = os.path.join(workdir, name)
            if not os.path.exists(key):
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key],
                               check=True)
        shutil.copy(os.path.join(workdir, "user_ed25519.pub"),
                    os.path.join(workdir, "authorized_keys"))
        bindir = os.path.dirname(sys.executable)
        far_path = path or f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}"
        self.config = os.path.join(workdir, "sshd_config")
        with open(self.config, "w") as f:
            f.write(
                f"Port {self.port}\nListenAddress 127.0.0.1\n"
                f"HostKey {workdir}/host_ed25519\n"
                f"AuthorizedKeysFile {workdir}/authorized_keys\n"
                "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
                "KbdInteractiveAuthentication no\n"
                f"StrictModes no\nUsePAM no\nPidFile {workdir}/sshd.pid\n"
                f"SetEnv PATH={far_path} XDG_STATE_HOME={workdir}/far-state\n"
                "MaxStartups 100\nMaxSessions 100\n"
            )
        self.log = open(os.path.join(workdir, "sshd.log"), "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", self.config],
                                     stdout=self.log, stderr=self.log)
        self.rsh = shlex.join([
            "ssh", "-p", str(self.port), "-i", os.path.join(workdir, "user_ed25519"),
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-o", "IdentitiesOnly=yes",
        ])
        """The client command (``-e``, ``HSYNC_RSH``); the port is in it."""
        self.user = os.environ.get("USER") or "root"
        deadline = time.monotonic() + 20
        while True:
            ok = subprocess.run([*shlex.split(self.rsh), "127.0.0.1", "true"],
                                capture_output=True).returncode == 0
            if ok:
                break
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"sshd did not start (see {workdir}/sshd.log)")
            time.sleep(0.1)

    def add_key(self, line: str) -> None:
        with open(os.path.join(self.dir, "authorized_keys"), "a") as f:
            f.write(line + "\n")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
