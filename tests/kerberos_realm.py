"""A private Kerberos realm for tests: Debian's MIT KDC in a temporary folder, on a loopback port.

:func:`running_realm` makes a realm ``HELPDESK.TEST`` with users (``kadmin.local addprinc``), a
service principal ``HTTP/localhost`` with its keytab (``ktadd``), and runs ``krb5kdc`` in the
foreground until the block ends. :meth:`Realm.sign_in` is what a user does: ``kinit`` with a
password into a credential cache of their own. Nothing outside the folder is touched; the
process environment names the realm only while a test sets it (:meth:`Realm.environment`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REALM = "HELPDESK.TEST"
USERS = {"alice": "alice-password-1", "bob": "bob-password-2", "carol": "carol-password-3"}
SERVICE_HOST = "localhost"
_TOOLS = ("kdb5_util", "kadmin.local", "krb5kdc", "kinit")
_SBIN = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")


class RealmUnavailable(RuntimeError):
    """The KDC could not be set up; ``missing`` when its programs are not installed."""

    def __init__(self, message: str, *, missing: bool = False) -> None:
        super().__init__(message)
        self.missing = missing


def _tool(name: str) -> str:
    found = shutil.which(name, path=os.pathsep.join((os.environ.get("PATH", ""), *_SBIN)))
    if found is None:
        raise RealmUnavailable(
            f"{name} is not installed (Debian: krb5-kdc, krb5-admin-server, krb5-user)", missing=True
        )
    return found


@dataclass(frozen=True)
class Realm:
    folder: Path
    port: int
    keytab: Path  # HTTP/localhost's key, for the token service
    passwords: dict[str, str]

    @property
    def config(self) -> Path:
        return self.folder / "krb5.conf"

    def cache(self, user: str) -> Path:
        return self.folder / f"cc-{user}"

    def environment(self, user: str | None) -> dict[str, str]:
        """What a process signed in as ``user`` (None: nobody) has in its environment."""
        cache = self.cache(user) if user else self.folder / "cc-nobody"
        return {"KRB5_CONFIG": str(self.config), "KRB5CCNAME": f"FILE:{cache}"}

    def sign_in(self, user: str, password: str | None = None) -> None:
        """``kinit user`` with the password on stdin, as a person does at a prompt."""
        given = self.passwords[user] if password is None else password
        result = subprocess.run(
            [_tool("kinit"), f"{user}@{REALM}"],
            input=given + "\n",
            env={**os.environ, **self.environment(user)},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            raise RealmUnavailable(f"kinit {user} failed: {result.stderr.strip()}")

    def sign_out(self, user: str) -> None:
        self.cache(user).unlink(missing_ok=True)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _write_configs(folder: Path, port: int) -> dict[str, str]:
    (folder / "krb5.conf").write_text(
        f"""[libdefaults]
  default_realm = {REALM}
  dns_canonicalize_hostname = false
  rdns = false
  dns_lookup_kdc = false
  dns_lookup_realm = false
  udp_preference_limit = 1
[realms]
  {REALM} = {{
    kdc = 127.0.0.1:{port}
  }}
""",
        encoding="utf-8",
    )
    (folder / "kdc.conf").write_text(
        f"""[kdcdefaults]
  kdc_ports = {port}
  kdc_tcp_ports = {port}
[realms]
  {REALM} = {{
    database_name = {folder}/principal
    key_stash_file = {folder}/stash
    acl_file = {folder}/kadm5.acl
  }}
[logging]
  kdc = FILE:{folder}/kdc.log
""",
        encoding="utf-8",
    )
    return {
        **os.environ,
        "KRB5_CONFIG": str(folder / "krb5.conf"),
        "KRB5_KDC_PROFILE": str(folder / "kdc.conf"),
    }


def _run(args: list[str], env: dict[str, str]) -> None:
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        raise RealmUnavailable(f"{' '.join(args)} failed: {(result.stderr or result.stdout).strip()}")


@contextlib.contextmanager
def running_realm(folder: Path, users: dict[str, str]) -> Iterator[Realm]:
    """A realm with ``users`` (name -> password) and ``HTTP/localhost``, its KDC running."""
    tools = {name: _tool(name) for name in _TOOLS}
    port = _free_port()
    env = _write_configs(folder, port)
    _run([tools["kdb5_util"], "create", "-s", "-r", REALM, "-P", "master-password-for-tests"], env)
    for user, password in users.items():
        _run([tools["kadmin.local"], "-r", REALM, "-q", f"addprinc -pw {password} {user}"], env)
    service = f"HTTP/{SERVICE_HOST}"
    keytab = folder / "http.keytab"
    _run([tools["kadmin.local"], "-r", REALM, "-q", f"addprinc -randkey {service}"], env)
    _run([tools["kadmin.local"], "-r", REALM, "-q", f"ktadd -k {keytab} {service}"], env)
    kdc = subprocess.Popen(
        [tools["krb5kdc"], "-n", "-r", REALM],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 15
        while True:  # listening on TCP means it is ready for UDP too: both are bound at start
            if kdc.poll() is not None:
                raise RealmUnavailable(f"krb5kdc exited: {kdc.stderr.read() if kdc.stderr else ''}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
            if time.monotonic() > deadline:
                raise RealmUnavailable("krb5kdc did not start listening within 15 s")
            time.sleep(0.05)
        yield Realm(folder, port, keytab, dict(users))
    finally:
        kdc.terminate()
        try:
            kdc.wait(10)
        except subprocess.TimeoutExpired:
            kdc.kill()
            kdc.wait()
        if kdc.stderr is not None:
            kdc.stderr.close()
