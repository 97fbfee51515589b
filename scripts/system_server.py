"""Server programs from Debian packages, run under their own OS account when we are root.

The PostgreSQL and MariaDB launchers find their programs on this machine; when they are
missing and we are root, :func:`ensure_installed` installs the Debian package with apt-get
(CI starts with nothing). A database server should not run as root (PostgreSQL refuses to), so
:func:`server_account` names (and if need be creates) the system user it runs as, and
:func:`run_as` gives subprocess the arguments that drop to it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from collections.abc import Callable
from typing import Any, TypeVar

from localproc import LocalServiceError

Programs = TypeVar("Programs")


def install_command(package: str) -> str:
    """The shell command an operator runs as root to install ``package``."""
    return f"apt-get update && apt-get install -y --no-install-recommends {package}"


def ensure_installed(
    find: Callable[[], Programs | None],
    *,
    package: str,
    programs: str,
    looked_in: str,
    say: Callable[[str], None],
) -> Programs:
    """What ``find`` finds, installing the Debian ``package`` first if it finds nothing.

    ``programs`` names what is looked for ("PostgreSQL server programs (initdb, postgres)"),
    ``looked_in`` where (for the error when even the installed package does not have them).
    """
    found = find()
    if found is not None:
        return found
    if os.geteuid() != 0:
        raise LocalServiceError(
            f"{programs} were not found ({looked_in}), and only root can install them. Run:\n"
            f"    sudo sh -c '{install_command(package)}'\n"
            "then run this command again."
        )
    if not shutil.which("apt-get"):
        raise LocalServiceError(
            f"{programs} were not found and apt-get is not available to install them; "
            f"install the {package} package with this system's package manager."
        )
    say(f"{programs} not found; installing the Debian '{package}' package")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"],
                    ["apt-get", "install", "-y", "--no-install-recommends", package]):
        result = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=2, stderr=2, env=env)
        if result.returncode != 0:
            raise LocalServiceError(
                f"'{' '.join(command)}' failed with exit code {result.returncode} "
                f"(its output is above); {package} could not be installed"
            )
    found = find()
    if found is None:
        raise LocalServiceError(
            f"installed the '{package}' package, but still cannot find {programs} ({looked_in})"
        )
    return found


def server_account(
    os_user: str, *, why: str, say: Callable[[str], None]
) -> pwd.struct_passwd | None:
    """The account a server runs as: ``os_user`` when we are root (created if missing, ``why``
    says for whom), else None: the server runs as us."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(os_user)
    except KeyError:
        pass
    say(f"creating system user '{os_user}' ({why})")
    result = subprocess.run(
        ["useradd", "--system", "--user-group", "--no-create-home", os_user],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise LocalServiceError(
            f"could not create the '{os_user}' OS user ({why}): useradd exit code "
            f"{result.returncode}: {result.stderr.strip()}"
        )
    return pwd.getpwnam(os_user)


def run_as(account: pwd.struct_passwd | None) -> dict[str, Any]:
    """subprocess keyword arguments that drop root privileges to ``account`` (None: stay us)."""
    if account is None:
        return {}
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
