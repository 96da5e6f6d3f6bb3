"""A throwaway Request Tracker 5 for tests: Debian's ``request-tracker5`` run from a temporary directory.

:func:`running_rt` needs the packages ``request-tracker5``, ``rt5-db-sqlite`` and ``rt5-standalone``
(``bash scripts/install.sh --test`` installs them) and works as any user: it never reads or writes
/etc/request-tracker5, /var/lib/request-tracker5 or Debian's own database. It

1. writes a private ``RT_SiteConfig.pm`` in the directory (SQLite database, web server on a free
   loopback port, mail handed to a Perl sub that appends it to ``outgoing-mail.mbox`` instead of
   sendmail, log in ``rt.log``) and an empty ``RT_SiteConfig.d``. RT reads the site config named by
   ``RT_SITE_CONFIG`` and the drop-in directory named by ``RT_SITE_CONFIG_DIR`` (RT::Config::LoadConfig);
   pointing both here keeps Debian's /etc/request-tracker5/RT_SiteConfig.d (its debconf database
   settings) out;
2. runs ``rt-setup-database --action init --skip-create`` (schema, core data and RT's own initial
   data, as a real installation has them; root gets a random password), then ``--action insert``
   with a data file that adds the queue, a privileged user with only the rights the connector
   documents, and a REST 2 auth token for it (RT::AuthToken, created in the data file's ``@Final``
   hook since RT offers no command for it), written to a file for us to read;
3. starts ``rt-server --server Standalone`` on 127.0.0.1 in its own process group and waits until
   ``/REST/2.0/rt`` answers to the token.

Stopping sends SIGTERM to the whole group, then SIGKILL if it lingers. Not SIGINT: rt-server, when
run as root, answers SIGINT by chowning /var/lib/request-tracker5 to www-data.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

__all__ = [
    "ARTICLE_CLASS",
    "RT_PACKAGES",
    "RtInstance",
    "RtUnavailable",
    "attachment_texts",
    "missing_rt",
    "rest",
    "running_rt",
]

RT_PACKAGES = ("request-tracker5", "rt5-db-sqlite", "rt5-standalone")
RT_SERVER = Path("/usr/share/request-tracker5/libexec/rt-server")
SETUP_CANDIDATES = (Path("/usr/sbin/rt-setup-database-5"), Path("/usr/sbin/rt-setup-database"))
AGENT = "hv-agent"
AGENT_EMAIL = "hv-agent@example.test"
# Exactly the queue rights app/tools/connectors/rt.py documents, so the tests prove they suffice.
AGENT_RIGHTS = ("SeeQueue", "CreateTicket", "ShowTicket", "CommentOnTicket")
# And the article rights it documents: on RT's default article class (RT's initial data makes it),
# and on that class's "Content" custom field, which holds an article's text; so the knowledge base
# sync is tested with no more than those.
ARTICLE_CLASS = "General"
AGENT_CLASS_RIGHTS = ("SeeClass", "ShowArticle")
ARTICLE_CONTENT_FIELD = "Content"
START_TIMEOUT_S = 90.0
SETUP_TIMEOUT_S = 120.0


class RtUnavailable(Exception):
    """RT is not installed (``missing``) or could not be set up or started."""

    def __init__(self, message: str, *, missing: bool = False) -> None:
        super().__init__(message)
        self.missing = missing


@dataclass(frozen=True, slots=True)
class RtInstance:
    base_url: str  # the web root, http://127.0.0.1:<port>; REST 2 is under /REST/2.0
    port: int
    queue: str
    token: str  # REST 2 auth token of ``user``: "Authorization: token <token>"
    user: str
    password: str  # the same user's password, for basic auth
    root_password: str  # RT's superuser "root", for tests that look or act beside the connector
    directory: Path  # config, database, rt.log, server.log, outgoing-mail.mbox

    @property
    def log(self) -> Path:
        return self.directory / "rt.log"


def missing_rt() -> str | None:
    """Why RT cannot run here (what to install), or None when it can."""
    lacking = [str(RT_SERVER)] if not RT_SERVER.is_file() else []
    if _setup_database() is None:
        lacking.append("rt-setup-database")
    perl = shutil.which("perl")
    if perl is None:
        lacking.append("perl")
    elif subprocess.run([perl, "-MDBD::SQLite", "-e", "1"], capture_output=True, check=False).returncode:
        lacking.append("Perl's DBD::SQLite")
    if not lacking:
        return None
    return (
        f"Request Tracker 5 is not installed ({', '.join(lacking)} missing): "
        f"install the Debian packages {' '.join(RT_PACKAGES)} (bash scripts/install.sh --test)"
    )


@contextlib.contextmanager
def running_rt(directory: Path | None = None, *, queue: str = "Helpdesk") -> Iterator[RtInstance]:
    """A fresh RT with ``queue`` and a token, served on loopback until the ``with`` block ends.

    ``directory`` (made if needed, left in place for its logs) holds everything; without one a
    temporary directory is used and removed afterwards. Raises :class:`RtUnavailable`.
    """
    reason = missing_rt()
    if reason is not None:
        raise RtUnavailable(reason, missing=True)
    with contextlib.ExitStack() as stack:
        if directory is None:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rt-")))
        directory.mkdir(parents=True, exist_ok=True)
        port = _free_port()
        env = _write_config(directory, port)
        password = "hv-agent-" + os.urandom(8).hex()
        root_password = "root-" + os.urandom(8).hex()
        token = _set_up_database(directory, env, queue, password, root_password)
        process = _start_server(directory, env, port)
        stack.callback(_stop, process)
        instance = RtInstance(
            base_url=f"http://127.0.0.1:{port}",
            port=port,
            queue=queue,
            token=token,
            user=AGENT,
            password=password,
            root_password=root_password,
            directory=directory,
        )
        _wait_until_serving(instance, process)
        yield instance


def _setup_database() -> Path | None:
    return next((path for path in SETUP_CANDIDATES if path.is_file()), None)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _perl_string(value: str) -> str:
    """``value`` as a single-quoted Perl literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _write_config(directory: Path, port: int) -> dict[str, str]:
    """The private site config; returns the environment that makes RT read it and only it."""
    for sub in ("RT_SiteConfig.d", "mason_data", "session_data", "var"):
        (directory / sub).mkdir(exist_ok=True)
    d = {name: _perl_string(str(directory / name)) for name in ("mason_data", "session_data", "var")}
    mbox = _perl_string(str(directory / "outgoing-mail.mbox"))
    config = f"""\
# Written by tests/rt_server.py for one test session.
# Everything RT would keep under /var goes here ($VarPath is where the 'mbox' mailer, GnuPG and
# the shredder write; it is a package variable, not an option).
$RT::VarPath = {d["var"]};
Set($rtname, 'helpdesk-voice-test');
Set($Organization, 'helpdesk-voice.test');
Set($Timezone, 'UTC');
Set($DatabaseType, 'SQLite');
Set($DatabaseName, {_perl_string(str(directory / "rt.sqlite"))});
Set($WebDomain, '127.0.0.1');
Set($WebPort, {port});
Set($WebPath, '');
Set($WebBaseURL, 'http://127.0.0.1:{port}');
Set($CorrespondAddress, 'rt@helpdesk-voice.test');
Set($CommentAddress, 'rt-comment@helpdesk-voice.test');
Set($MasonDataDir, {d["mason_data"]});
Set($MasonSessionDir, {d["session_data"]});
# RT checks the auth token on every request with bcrypt at this cost (default 12, ~0.25 s a
# request here); the token of a throwaway instance needs no protection against cracking.
Set($BcryptCost, 4);
Set($LogDir, {_perl_string(str(directory))});
Set($LogToFile, 'info');
Set($LogToFileNamed, 'rt.log');
Set($LogToSyslog, undef);
Set($LogToSTDERR, 'error');
# No mail leaves the machine: RT calls this sub instead of sendmail (a code ref is a documented
# value of $MailCommand), and the file shows what RT would have sent.
Set($MailCommand, sub {{
    my $entity = shift;
    open my $fh, '>>', {mbox} or return 0;
    print $fh "From rt\\@localhost\\n", $entity->as_string, "\\n";
    close $fh;
    return 1;
}});
1;
"""
    site_config = directory / "RT_SiteConfig.pm"
    site_config.write_text(config, encoding="utf-8")
    env = dict(os.environ)
    env.update(
        RT_SITE_CONFIG=str(site_config),
        RT_SITE_CONFIG_DIR=str(directory / "RT_SiteConfig.d"),
        LC_ALL="C.UTF-8",
        LANG="C.UTF-8",
    )
    # A PERL5LIB or PERL5OPT from the caller's shell could load other modules into RT.
    for name in ("PERL5LIB", "PERL5OPT", "PERLLIB", "RT_TESTING"):
        env.pop(name, None)
    return env


def _set_up_database(
    directory: Path, env: dict[str, str], queue: str, password: str, root_password: str
) -> str:
    setup = _setup_database()
    assert setup is not None  # missing_rt() said it is there
    token_file = directory / "token"
    rights = " ".join(AGENT_RIGHTS)
    class_rights = " ".join(AGENT_CLASS_RIGHTS)
    data = f"""\
# Written by tests/rt_server.py: the queue, the integration user and its token.
@Queues = ({{ Name => {_perl_string(queue)}, Description => 'Helpdesk Voice tests' }});
@Users = ({{
    Name => {_perl_string(AGENT)},
    Password => {_perl_string(password)},
    EmailAddress => {_perl_string(AGENT_EMAIL)},
    RealName => 'Helpdesk Voice',
    Privileged => 1,
}});
@ACL = (
    (map {{ {{ UserId => {_perl_string(AGENT)}, Queue => {_perl_string(queue)}, Right => $_ }} }}
        qw({rights})),
    (map {{ {{
        UserId => {_perl_string(AGENT)},
        ObjectType => 'RT::Class',
        ObjectId => {_perl_string(ARTICLE_CLASS)},
        Right => $_,
    }} }} qw({class_rights})),
    {{
        UserId => {_perl_string(AGENT)},
        CF => {_perl_string(ARTICLE_CONTENT_FIELD)},
        LookupType => 'RT::Class-RT::Article',
        Right => 'SeeCustomField',
    }},
);
@Final = (sub {{
    my $user = RT::User->new(RT->SystemUser);
    $user->Load({_perl_string(AGENT)});
    die "no user " . {_perl_string(AGENT)} . "\\n" unless $user->Id;
    my $token = RT::AuthToken->new(RT->SystemUser);
    my ($id, $msg, $authstring) = $token->Create(Owner => $user->Id, Description => 'Helpdesk Voice tests');
    die "could not create the auth token: $msg\\n" unless $id;
    open my $fh, '>', {_perl_string(str(token_file))} or die "token file: $!\\n";
    print $fh $authstring;
    close $fh or die "token file: $!\\n";
}});
1;
"""
    datafile = directory / "helpdesk-voice-data.pl"
    datafile.write_text(data, encoding="utf-8")
    setup_log = directory / "setup.log"
    # Not RT's well-known default root password, even on loopback for a few seconds.
    root_password_file = directory / "root-password"
    root_password_file.write_text(root_password, encoding="ascii")
    steps = (
        ["--action", "init", "--skip-create", "--root-password-file", str(root_password_file)],
        ["--action", "insert", "--datafile", str(datafile)],
    )
    with setup_log.open("ab") as log:
        for args in steps:
            try:
                done = subprocess.run(
                    [str(setup), *args],
                    env=env,
                    cwd=directory,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=SETUP_TIMEOUT_S,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                raise RtUnavailable(
                    f"{setup.name} {' '.join(args[:2])} took over {SETUP_TIMEOUT_S:.0f} s; see {setup_log}"
                ) from None
            if done.returncode != 0:
                raise RtUnavailable(
                    f"{setup.name} {' '.join(args[:2])} failed (exit {done.returncode}):\n{_tail(setup_log)}"
                )
    # rt-setup-database exits 0 even when an object of the data file could not be made; it logs it.
    errors = [
        line for line in _tail(setup_log, 200).splitlines() if "[error]" in line or "[critical]" in line
    ]
    if errors:
        raise RtUnavailable(
            "rt-setup-database could not make everything the tests need:\n" + "\n".join(errors)
        )
    try:
        token = token_file.read_text(encoding="ascii").strip()
    except OSError as exc:
        raise RtUnavailable(f"RT made no auth token ({exc}):\n{_tail(setup_log)}") from None
    if not token:
        raise RtUnavailable(f"RT wrote an empty auth token:\n{_tail(setup_log)}")
    return token


def _start_server(directory: Path, env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    # Standalone (HTTP::Server::PSGI) is one process: nothing forks that could outlive the test, and
    # the tests make one request at a time anyway. Starlet, rt-server's default, forks 10 workers.
    with (directory / "server.log").open("ab") as log:
        return subprocess.Popen(
            [str(RT_SERVER), "--server", "Standalone", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            cwd=directory,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait_until_serving(instance: RtInstance, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    server_log = instance.directory / "server.log"
    with httpx.Client(timeout=5.0) as client:
        while True:
            if process.poll() is not None:
                raise RtUnavailable(f"rt-server exited with {process.returncode}:\n{_tail(server_log)}")
            try:
                response = client.get(
                    f"{instance.base_url}/REST/2.0/rt", headers={"Authorization": f"token {instance.token}"}
                )
            except httpx.TransportError:
                response = None
            if response is not None:
                if response.status_code == 200:
                    return
                raise RtUnavailable(
                    f"rt-server answered /REST/2.0/rt with HTTP {response.status_code}:\n"
                    + _tail(instance.log)
                )
            if time.monotonic() > deadline:
                raise RtUnavailable(
                    f"rt-server did not answer within {START_TIMEOUT_S:.0f} s:\n{_tail(server_log)}"
                )
            time.sleep(0.05)


def _stop(process: subprocess.Popen[bytes]) -> None:
    # Signals go to the group only while its leader lives: once reaped, the group id could be reused.
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return f"({path} unreadable)"
    return "\n".join(text.splitlines()[-lines:])


def rest(rt: RtInstance, method: str, path: str, **kwargs: Any) -> Any:
    """RT's REST 2 as its superuser: the test's own witness, beside the connector's account."""
    response = httpx.request(
        method,
        f"{rt.base_url}/REST/2.0{path}",
        auth=("root", rt.root_password),
        timeout=20,
        **kwargs,
    )
    response.raise_for_status()
    return response.json()


def attachment_texts(rt: RtInstance, ticket_id: str) -> dict[str, str]:
    """Each transaction's text (by transaction id) of the ticket."""
    body = rest(rt, "GET", f"/ticket/{ticket_id}/attachments", params={"fields": "Content,TransactionId"})
    return {str(item["TransactionId"]): str(item.get("Content") or "") for item in body["items"]}
