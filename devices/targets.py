"""Where a deployment goes: ``ssh://[user@]host[:port]/path`` or ``dir:/path``.

Both run the same POSIX shell snippets on the device, one mechanism: a ``dir:``
target runs them with the local ``sh``, an SSH target hands them to the system
``ssh`` client (OpenSSH), so its own configuration (keys, agents, jump hosts,
``~/.ssh/config`` or ``--ssh-config``) applies. Host keys are checked: ssh runs
with ``BatchMode=yes`` and ``StrictHostKeyChecking=yes`` (an unknown or changed
host key is refused) unless the user asks for ``accept-new`` (trust a host on
first contact). A query ``?python=CMD`` names the device's interpreter (default:
``python3`` over SSH, this interpreter for ``dir:``).
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

from .. import progress

SSH_TIMEOUT_S = 15  # ConnectTimeout: an unreachable host fails within this


class TargetError(ValueError):
    """The target could not be reached or refused what was asked: one line naming it."""


@dataclass
class Target:
    spec: str                      # as the user wrote it
    root: str                      # the device folder
    python: str                    # the device's interpreter
    host: str | None = None        # None: this machine (dir:)
    user: str | None = None
    port: int | None = None
    ssh_config: str | None = None
    host_keys: str = "yes"         # StrictHostKeyChecking: "yes" or "accept-new"
    env: dict = field(default_factory=dict)

    def _argv(self, script: str) -> list[str]:
        if self.host is None:
            return ["sh", "-c", script]
        argv = ["ssh", "-o", "BatchMode=yes", "-o", f"StrictHostKeyChecking={self.host_keys}",
                "-o", f"ConnectTimeout={SSH_TIMEOUT_S}", "-o", "LogLevel=ERROR"]
        if self.ssh_config:
            argv += ["-F", self.ssh_config]
        if self.port:
            argv += ["-p", str(self.port)]
        return [*argv, f"{self.user}@{self.host}" if self.user else self.host, "--", script]

    def run(self, script: str, stdin: bytes | None = None, what: str = "") -> bytes:
        """Run ``script`` on the device; its stdout. TargetError with the device's (or
        ssh's) last line of stderr when it fails."""
        proc = self._run(script, stdin)
        if proc.returncode != 0:
            raise self.error(proc.returncode, proc.stderr, what)
        return proc.stdout

    def _run(self, script: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
        feed = {"stdin": subprocess.DEVNULL} if stdin is None else {"input": stdin}
        return subprocess.run(self._argv(script), capture_output=True, **feed)

    def error(self, code: int, stderr: bytes, what: str) -> TargetError:
        lines = [l.strip() for l in stderr.decode(errors="replace").splitlines() if l.strip()]
        said = lines[-1] if lines else f"exit status {code}"
        if self.host is not None and code == 255:
            return TargetError(f"--target {self.spec!r}: ssh failed: {said}")
        return TargetError(f"--target {self.spec!r}: {what + ': ' if what else ''}{said}")

    def send(self, data: bytes, name: str, *, folder: str = "incoming", arch: str | None = None,
             show: bool = False, limit_kib_s: float | None = None) -> float:
        """Write ``data`` to ``ROOT/folder/name`` (through ``name.partial``, renamed
        only when whole: a cut transfer never looks like a bundle); seconds taken.
        ``arch``: refuse, before sending, a device whose ``uname -m`` differs."""
        d = shlex.quote(f"{self.root}/{folder}")
        part, final = (shlex.quote(f"{self.root}/{folder}/{name}{s}") for s in (".partial", ""))
        check = (f'm=$(uname -m); if [ "$m" != {arch} ]; then echo "this device is $m, the bundle is for {arch}" >&2; '
                 "exit 3; fi;" if arch else "")
        script = (f"{self.check_root_script()} {check} mkdir -p {d} && cat > {part} && "
                  f"[ \"$(wc -c < {part})\" -eq {len(data)} ] && mv -f {part} {final}")
        start = time.perf_counter()
        proc = subprocess.Popen(self._argv(script), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        chunk = 1 << 16
        try:
            with progress.bar(show, total=len(data), desc=f"push {self.spec}", unit="B") as bar:
                for at in range(0, len(data), chunk):
                    proc.stdin.write(data[at:at + chunk])
                    bar.update(min(chunk, len(data) - at))
                    if limit_kib_s:  # keep the average rate under the limit
                        ahead = (at + chunk) / (1024 * limit_kib_s) - (time.perf_counter() - start)
                        if ahead > 0:
                            time.sleep(ahead)
            proc.stdin.close()
        except BrokenPipeError:
            pass  # the device side ended early: its stderr says why
        except BaseException:
            proc.kill()
            raise
        stderr = proc.stderr.read()
        if proc.wait() != 0:
            raise self.error(proc.returncode, stderr, f"sending {name}")
        return time.perf_counter() - start

    def check_root_script(self) -> str:
        r = shlex.quote(self.root)
        return (f"if [ -e {r} ] && [ ! -d {r} ]; then echo \"{self.root} is a file, not a folder\" >&2; exit 3; fi;")

    def edgetrain(self, args: list[str], bootstrap: str | None = None) -> str:
        """The shell line that runs ``edgetrain device --root ROOT ARGS`` with the
        active release's code (or, when none is installed yet, ``bootstrap``: the
        device wheel that came with the first bundle)."""
        lib = shlex.quote(f"{self.root}/current/lib")
        pick = f"L={lib};"
        if bootstrap:
            pick = f"if [ -d {lib} ]; then L={lib}; else L={shlex.quote(bootstrap)}; fi;"
        cmd = " ".join(shlex.quote(a) for a in ["-m", "edgetrain.cli", "device", "--root", self.root, *args])
        env = "".join(f"{k}={shlex.quote(v)} " for k, v in self.env.items())
        return f"{self.check_root_script()} {pick} {env}PYTHONPATH=\"$L\" exec {self.python} {cmd}"

    def device(self, args: list[str], what: str, bootstrap: str | None = None) -> dict:
        """``edgetrain device ARGS --json`` on the device: its result, or a TargetError
        carrying the device's own one-line error."""
        proc = self._run(self.edgetrain([*args, "--json"], bootstrap))
        lines = proc.stdout.decode(errors="replace").strip().splitlines()
        try:
            result = json.loads(lines[-1]) if lines else None
        except ValueError:
            result = None
        if proc.returncode == 0 and isinstance(result, dict):
            return result
        if isinstance(result, dict) and "error" in result:
            raise TargetError(f"--target {self.spec!r}: {what}: {result['error']}")
        raise self.error(proc.returncode, proc.stderr, what)

    def read(self, path: str) -> bytes:
        """The bytes of ``ROOT/path`` on the device."""
        return self.run(f"cat {shlex.quote(f'{self.root}/{path}')}", what=f"reading {path}")


def parse(spec: str, *, ssh_config: str | None = None, accept_new_host_key: bool = False,
          flag: str = "--target") -> Target:
    """A :class:`Target` from ``ssh://[user@]host[:port]/path[?python=CMD]`` or
    ``dir:/path[?python=CMD]``; ValueError naming ``flag`` otherwise."""
    text, _, query = spec.partition("?")
    options = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    unknown = sorted(set(options) - {"python"})
    if unknown:
        raise ValueError(f"{flag} {spec!r}: unknown option(s) {unknown}; the one option is ?python=CMD")
    if text.startswith("dir:"):
        root = text[4:]
        if not root:
            raise ValueError(f"{flag} {spec!r}: expected dir:/path/to/folder")
        return Target(spec, os.path.abspath(root), options.get("python") or shlex.quote(sys.executable))
    if text.startswith("ssh://"):
        url = urlsplit(text)
        try:
            port = url.port
        except ValueError:
            raise ValueError(f"{flag} {spec!r}: the port is not a number in 1..65535") from None
        if not url.hostname or not url.path or url.path == "/":
            raise ValueError(f"{flag} {spec!r}: expected ssh://[user@]host[:port]/path (the folder on the device)")
        if ssh_config and not os.path.isfile(ssh_config):
            raise ValueError(f"--ssh-config {ssh_config!r} does not exist")
        return Target(spec, unquote(url.path), options.get("python") or "python3", host=url.hostname,
                      user=unquote(url.username) if url.username else None, port=port, ssh_config=ssh_config,
                      host_keys="accept-new" if accept_new_host_key else "yes")
    raise ValueError(f"{flag} {spec!r}: expected ssh://[user@]host[:port]/path or dir:/path")


def read_targets(path: str, **options) -> list[Target]:
    """The targets of a hosts file: one per line; blank lines and ``#`` comments skipped."""
    from ..cli_io import read_bytes
    lines = read_bytes(path, "--targets").decode(errors="replace").splitlines()
    specs = [l.split("#", 1)[0].strip() for l in lines]
    targets = [parse(s, flag=f"--targets {path!r} line {i + 1}:", **options) for i, s in enumerate(specs) if s]
    if not targets:
        raise ValueError(f"--targets {path!r} lists no target")
    return targets
