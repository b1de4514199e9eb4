"""OpenSSH's server on a loopback port, for the deploy tests and bench/deploy.py: its own
throw-away host key, one authorised user key, and a client configuration (``ssh -F``) that
knows the host key. Needs Debian's openssh-server and openssh-client (the README's test
command installs them)."""
import getpass
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
MISSING = None if os.path.exists(SSHD) and shutil.which("ssh") else \
    "OpenSSH (openssh-server, openssh-client) is not installed; the README's test command installs it"
USER = getpass.getuser()  # an unprivileged sshd lets in only the user it runs as


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keypair(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", path], check=True)
    return " ".join(Path(f"{path}.pub").read_text().split()[:2])


class Sshd:
    """sshd on 127.0.0.1:port with its own host key, one authorised user key and a client
    config (``ssh -F``) that knows the host key; ``config(known=…, key=…)`` writes variants."""

    def __init__(self, folder: Path, device_python: Path, cache: Path):
        self.folder, self.port, self.python = folder, free_port(), device_python
        self.host_key = keypair(folder / "host_key")
        self.user_key = keypair(folder / "user_key")
        keypair(folder / "stranger_key")
        (folder / "authorized_keys").write_text(self.user_key + "\n")
        (folder / "sshd_config").write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {folder / 'host_key'}",
            f"PidFile {folder / 'sshd.pid'}", f"AuthorizedKeysFile {folder / 'authorized_keys'}",
            "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no",
            f"SetEnv EDGETRAIN_CACHE={cache}", ""]))
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege separation folder, as its service makes it
        self.proc = subprocess.Popen([SSHD, "-f", folder / "sshd_config", "-D", "-e"], stdout=subprocess.DEVNULL,
                                     stderr=open(folder / "sshd.log", "wb"))
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    break
            time.sleep(0.05)
        self.ssh_config = self.config()

    def config(self, known: str | None = "host", key: str = "user_key", name: str = "ssh_config") -> str:
        lines = {"host": f"[127.0.0.1]:{self.port} {self.host_key}\n",
                 "other": f"[127.0.0.1]:{self.port} {keypair(self.folder / f'other_host_{name}')}\n",
                 None: ""}[known]
        (self.folder / f"known_{name}").write_text(lines)
        (self.folder / name).write_text("\n".join([
            "Host 127.0.0.1", f"  IdentityFile {self.folder / key}", "  IdentitiesOnly yes",
            f"  UserKnownHostsFile {self.folder / f'known_{name}'}", "  GlobalKnownHostsFile /dev/null", ""]))
        return str(self.folder / name)

    def target(self, root: Path) -> str:
        return f"ssh://{USER}@127.0.0.1:{self.port}{root}?python={self.python}"

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)
