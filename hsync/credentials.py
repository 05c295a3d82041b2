"""Secrets and connection settings given by the user: password files, URLs that carry
a password, and the per-side ``Credentials`` the command line, the daemon's config and
the Python API build (SPEC 8: a secret never appears in logs, reports, process
arguments or history files).

- ``private(mode)``: the one test of "nobody else can read it" (no bit for the group or
  others), used for a config file that holds a password inline and for a password file.
- ``read_password_file``: a password from a file (its trailing newline removed), refused
  when others may read it.
- ``refuse_secret_in_url``: a URL with a password in it (``scheme://user:pw@host``, an
  LDAP ``bindname``/``X-BINDPW`` extension) is refused by a message that does not
  repeat it (the core checks every location; the LDAP plugin also refuses a user name).
- ``for_side``: one side's ``Credentials`` from options, or None when none applies.
"""

from __future__ import annotations

import os

from .backend import Credentials, scheme_of
from .errors import UsageError

TYPE_CHECKING = False  # not typing's: a sync does not import typing
if TYPE_CHECKING:
    from pathlib import Path

SERVER_SCHEMES = ("ldap", "ldaps")
"""Endpoints that connect to a server, for which ``--ca-file`` and ``--starttls`` mean
something (other endpoints ignore them)."""
# compiled on first use (``re`` caches them): most runs never need them
_USERINFO = r"^([A-Za-z][A-Za-z0-9+.-]*://)([^/?#]*)@"
_BINDPW = r"(?i)[?,!]\s*(x-bindpw|bindname|x-bindname)\s*="


def private(mode: int) -> bool:
    """True when a file of this mode gives its group and others no access at all."""
    return not mode & 0o077


def read_password_file(path: str | os.PathLike[str], where: str = "") -> str:
    """The password in ``path`` (its content without the trailing newline);
    ``UsageError`` (naming the file, never the password) when it cannot be read or when
    its group or others may read it (``chmod 600``)."""
    prefix = f"{where}: " if where else ""
    try:
        with open(path, encoding="utf-8") as f:
            mode = os.fstat(f.fileno()).st_mode
            if not private(mode):
                raise UsageError(
                    f"{prefix}{path}: password file readable by others (mode "
                    f"{mode & 0o777:04o}; chmod 600 it)"
                )
            return f.read().rstrip("\r\n")
    except OSError as e:
        raise UsageError(f"{prefix}{path}: cannot read the password file: {e.strerror}") \
            from None
    except UnicodeDecodeError:
        raise UsageError(f"{prefix}{path}: the password file is not UTF-8") from None


def redacted(location: str) -> str:
    """``location`` without what could be a secret: the user information before ``@``
    and everything from the first ``?`` on (LDAP URL extensions)."""
    import re  # only for a URL that may carry a secret (see refuse_secret_in_url)

    out = re.sub(_USERINFO, r"\1", location)
    return out.split("?", 1)[0]


def refuse_secret_in_url(location: str, *, user: bool = False) -> None:
    """``UsageError`` when ``location`` carries credentials (``user:password@``, or an
    LDAP bind name and password as URL extensions; with ``user``, a user name alone
    too: an LDAP URL has none, while ``ssh://user@host`` is fine). They would show in
    process lists, shell histories, logs and reports; the message names the URL without
    them."""
    if "@" not in location and "=" not in location:
        return  # neither user information nor a URL extension: nothing to look at
    import re

    m = re.match(_USERINFO, location)
    if (m and (":" in m.group(2) or (user and m.group(2)))) or re.search(_BINDPW, location):
        raise UsageError(
            f"{redacted(location)}: credentials in the URL are refused (they would show "
            "in process lists and logs); LDAP: --src-bind-dn/--dst-bind-dn (or "
            "HSYNC_SRC_BIND_DN/HSYNC_DST_BIND_DN) and the password in a file "
            "(--src-password-file/--dst-password-file)"
        )


def for_side(
    location: str,
    *,
    bind_dn: str | None = None,
    password_file: str | None = None,
    ca_file: str | None = None,
    starttls: bool = False,
    base: Path | None = None,
    where: str = "",
) -> Credentials | None:
    """The ``Credentials`` of one side, or None when nothing was given for it (the
    backend then reads the environment). What is not given (the bind DN, the password)
    still comes from the environment. ``ca_file`` and ``starttls`` apply only to an
    endpoint that connects to a server; a relative path is relative to ``base``."""
    server = scheme_of(location) in SERVER_SCHEMES
    password = None
    if password_file is not None:
        password = read_password_file(_relative_to(base, password_file), where)
    if ca_file is not None and server:
        path = _relative_to(base, ca_file)
        if not os.access(path, os.R_OK):
            prefix = f"{where}: " if where else ""
            raise UsageError(f"{prefix}{path}: cannot read the CA file")
        ca_file = str(path)
    else:
        ca_file = None
    starttls = starttls and server
    if bind_dn is None and password is None and ca_file is None and not starttls:
        return None
    return Credentials(bind_dn, password, ca_file=ca_file, starttls=starttls)


def _relative_to(base: Path | None, name: str) -> Path:
    """``name`` as a path, relative to ``base`` when it is relative and there is one."""
    from pathlib import Path  # only here: every run calls ``for_side``

    path = Path(name)
    return base / path if base is not None and not path.is_absolute() else path
