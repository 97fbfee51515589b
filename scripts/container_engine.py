"""Build and run the project's image with a real container engine, on machines without a registry.

Podman (with runc) from Debian's packages is the engine here: installed with apt-get when it is
missing and we are root. Where podman cannot be had, a Docker engine that answers is used
instead. Neither: :class:`EngineUnavailable` says why (the container test reports it as a skip).

No image registry is reachable, so ``FROM python:3.11-slim`` cannot be pulled. On podman a
stand-in is built from Debian's packages instead (:func:`ensure_base_image`): ``debootstrap
--variant=minbase`` of the host's release with python3, python3-venv, python3-pip,
ca-certificates and passwd; a venv at ``/usr/local`` so ``python`` and ``pip`` behave as in the
official image; the host's locally added CA certificates trusted inside, so pip in the build
trusts what the host trusts; imported under the Dockerfile's base name. It proves the Dockerfile
and the entrypoint; users build on the real base. The root filesystem is cached under
``.local/container/`` keyed by a hash of the recipe, and the imported image carries the same hash
as a label, so a warm run neither rebuilds nor re-imports it (a re-import would change the base
image's id and throw away the build's cached dependency layer).

Podman's quirks on these hosts, handled here: crun refuses the cgroup layout, so ``--runtime
runc``; runc refuses podman's default rlimits when the host's hard limits are lower, so every
``run`` and ``build`` passes ``--ulimit`` with the host's own hard limits, read at run time.

    python scripts/container_engine.py build [--tag checkpoint-consumer:dev]
    python scripts/container_engine.py base --background   # make test: build it meanwhile

The base image is made under a lock (``.local/container/base.lock``): ``make test`` starts it in
the background (most of its two minutes is downloading and unpacking packages) while the suite's
other tests run, and the container test's own call waits on the lock, then finds it made.
"""

from __future__ import annotations

import argparse
import configparser
import fcntl
import hashlib
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE = REPO_ROOT / ".local" / "container"
LOCAL_CAS = Path("/usr/local/share/ca-certificates")
BASE_LABEL = "org.checkpoint-consumer.base-recipe"
#: The stand-in base image's recipe; any change here changes the cache key.
BASE_PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates", "passwd")
BASE_SUITE = "bookworm"
#: pip settings that decide where packages come from, passed to the build as build args (the
#: Dockerfile declares each as an ARG). Certificates need no arg: the stand-in trusts the host's.
PIP_SETTINGS = ("index-url", "extra-index-url", "trusted-host")
PODMAN_PACKAGES = ("podman", "runc", "debootstrap")


class EngineUnavailable(Exception):
    """Neither podman nor a Docker engine can be had on this machine; the message says why."""


class BuildFailed(Exception):
    """A step of building the base image or the project's image failed."""


@dataclass(frozen=True)
class Engine:
    """A container engine's command line and the flags every build and run needs here."""

    kind: str  # "podman" or "docker"
    command: tuple[str, ...]
    common: tuple[str, ...] = field(default=())

    def with_flags(self, verb: str, *args: str) -> list[str]:
        """``run --runtime runc --network host --ulimit ... <args>`` (docker: --network only)."""
        return [verb, *self.common, *args]

    def run(self, *args: str, timeout: float = 120, check: bool = True
            ) -> subprocess.CompletedProcess[str]:
        """Run ``<engine> <args>`` (no extra flags), capture its output, fail loudly."""
        result = subprocess.run([*self.command, *args], capture_output=True, text=True,
                                timeout=timeout)
        if check and result.returncode != 0:
            raise BuildFailed(f"{' '.join([*self.command, *args])} exited {result.returncode}: "
                              f"{(result.stderr or result.stdout).strip()[-2000:]}")
        return result


def host_ulimit_args(limits: Mapping[str, int] | None = None) -> list[str]:
    """``--ulimit nofile=H:H --ulimit nproc=H:H`` from this host's hard limits (an unlimited one
    is left to the engine's default, which cannot exceed it).

    nproc is also capped at ``kernel.pid_max``: podman lowers its own hard nproc limit to it
    (seen here: 32768 under a shell whose limit is 96365), and runc cannot give the container
    more than the process that starts it has."""
    if limits is None:
        limits = {"nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
                  "nproc": _capped(resource.getrlimit(resource.RLIMIT_NPROC)[1],
                                   Path("/proc/sys/kernel/pid_max"))}
    return [arg for name, hard in limits.items() if hard != resource.RLIM_INFINITY
            for arg in ("--ulimit", f"{name}={hard}:{hard}")]


def _capped(limit: int, ceiling_file: Path) -> int:
    try:
        ceiling = int(ceiling_file.read_text())
    except (OSError, ValueError):
        return limit
    return ceiling if limit == resource.RLIM_INFINITY else min(limit, ceiling)


def apt_mirror(apt_dir: Path = Path("/etc/apt"), suite: str = BASE_SUITE) -> str:
    """The Debian mirror the host's apt uses for ``suite`` (sources.list or deb822 .sources)."""
    files = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list")),
             *sorted((apt_dir / "sources.list.d").glob("*.sources"))]
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", stanza, re.MULTILINE))
                if ("deb" in fields.get("Types", "").split()
                        and suite in fields.get("Suites", "").split()
                        and fields.get("Enabled", "yes").lower() != "no"):
                    return fields["URIs"].split()[0]
        else:
            for line in text.splitlines():
                words = re.sub(r"\[[^]]*\]", "", line).split()
                if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
                    return words[1]
    return "http://deb.debian.org/debian"


def pip_build_args(environ: Mapping[str, str] | None = None,
                   config_files: Sequence[Path] | None = None) -> dict[str, str]:
    """``PIP_INDEX_URL`` and friends as the host's pip would use them: the environment first,
    then pip's config files (site, then user: later files win, as in pip)."""
    environ = os.environ if environ is None else environ
    if config_files is None:
        home = Path(environ.get("HOME", "/root"))
        config_files = [Path("/etc/xdg/pip/pip.conf"), Path("/etc/pip.conf"),
                        home / ".pip" / "pip.conf", home / ".config" / "pip" / "pip.conf"]
        if "PIP_CONFIG_FILE" in environ:
            config_files = [*config_files, Path(environ["PIP_CONFIG_FILE"])]
    found: dict[str, str] = {}
    for path in config_files:
        parser = configparser.ConfigParser()
        try:
            parser.read(path)
        except (OSError, configparser.Error):
            continue
        for section in ("global", "install"):
            for name in PIP_SETTINGS:
                if parser.has_option(section, name):
                    found[name] = " ".join(parser.get(section, name).split())
    for name in PIP_SETTINGS:
        variable = "PIP_" + name.upper().replace("-", "_")
        if environ.get(variable):
            found[name] = environ[variable]
    return {"PIP_" + name.upper().replace("-", "_"): value for name, value in found.items()}


def base_image_name(dockerfile: Path) -> str:
    """The image the Dockerfile's first ``FROM`` names."""
    for line in dockerfile.read_text().splitlines():
        words = line.split()
        if words and words[0].upper() == "FROM":
            return next(w for w in words[1:] if not w.startswith("--"))
    raise BuildFailed(f"{dockerfile} has no FROM line")


def base_recipe(mirror: str, certificates: Sequence[Path]) -> str:
    """Everything that decides the stand-in base image's content, as one hashable text."""
    lines = [f"debootstrap --variant=minbase {BASE_SUITE} {mirror}",
             "include " + ",".join(BASE_PACKAGES), "venv /usr/local"]
    lines += [f"ca {path.name} {hashlib.sha256(path.read_bytes()).hexdigest()}"
              for path in certificates]
    return "\n".join(lines)


def find_engine(*, install: bool = True) -> Engine:
    """Podman (installed from Debian's packages when missing and root), else a Docker engine
    that answers; else :class:`EngineUnavailable`."""
    podman = shutil.which("podman")
    why_not = "podman is not installed"
    if (podman is None or shutil.which("runc") is None) and install:
        why_not = _install_podman()
        podman = shutil.which("podman")
    if podman is not None and shutil.which("runc") is not None:
        return Engine("podman", (podman,), ("--runtime", "runc", "--network", "host",
                                            *host_ulimit_args()))
    docker = shutil.which("docker")
    if docker is not None:
        answer = subprocess.run([docker, "info"], capture_output=True, text=True, timeout=30)
        if answer.returncode == 0:
            return Engine("docker", (docker,), ("--network", "host"))
        why_not += f"; docker is installed but no engine answers ({answer.stderr.strip()[:200]})"
    else:
        why_not += "; no docker client either"
    raise EngineUnavailable(why_not)


def _install_podman() -> str:
    """apt-get install podman runc debootstrap; returns why it could not, or ''."""
    if os.geteuid() != 0:
        return "podman is not installed and we are not root to apt-get install it"
    if shutil.which("apt-get") is None:
        return "podman is not installed and there is no apt-get to install it"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"],
                 ["apt-get", "install", "-y", "-qq",
                  *PODMAN_PACKAGES]):
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=900)
        if done.returncode != 0:
            return f"{' '.join(argv)} failed: {done.stderr.strip()[-500:]}"
    return ""


def ensure_base_image(engine: Engine, dockerfile: Path = REPO_ROOT / "Dockerfile") -> str:
    """Make the Dockerfile's base image available; returns its name. On docker the real base
    is pulled by the build; on podman the stand-in is built, or taken from the cache. One
    process at a time makes it: another waits for the lock, then finds it made."""
    name = base_image_name(dockerfile)
    if engine.kind != "podman":
        return name
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "base.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _ensure_stand_in(engine, name)


def _ensure_stand_in(engine: Engine, name: str) -> str:
    certificates = sorted(LOCAL_CAS.glob("*.crt")) if LOCAL_CAS.is_dir() else []
    mirror = apt_mirror()
    key = hashlib.sha256(base_recipe(mirror, certificates).encode()).hexdigest()[:16]
    labels = engine.run("image", "inspect", "--format", f'{{{{index .Labels "{BASE_LABEL}"}}}}',
                        name, check=False)
    if labels.returncode == 0 and labels.stdout.strip() == key:
        return name
    tarball = CACHE / f"base-{key}.tar"
    if not tarball.exists():
        _debootstrap(tarball, mirror, certificates)
    engine.run("import", "--change", f"LABEL {BASE_LABEL}={key}",
               "--change", "ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/bin:/usr/sbin:/bin:/sbin",
               "--change", "ENV LANG=C.UTF-8", "--change", 'CMD ["python3"]',
               str(tarball), name, timeout=300)
    return name


def _debootstrap(tarball: Path, mirror: str, certificates: Sequence[Path]) -> None:
    """The stand-in's root filesystem, packed into ``tarball``."""
    if shutil.which("debootstrap") is None:
        raise BuildFailed("debootstrap is needed to build the stand-in base image "
                          "(apt-get install debootstrap)")
    tarball.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=tarball.parent) as work:
        root = Path(work) / "root"
        _check(["debootstrap", "--variant=minbase", "--include=" + ",".join(BASE_PACKAGES),
                BASE_SUITE, str(root), mirror], timeout=900)
        cas = root / "usr/local/share/ca-certificates"
        cas.mkdir(parents=True, exist_ok=True)
        for certificate in certificates:
            shutil.copy(certificate, cas / certificate.name)
        _check(["chroot", str(root), "update-ca-certificates"])
        # A venv over /usr/local: `python`, `pip` on PATH and no externally-managed refusal.
        _check(["chroot", str(root), "python3", "-m", "venv", "/usr/local"])
        for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in (root / leftover).glob("*"):
                if path.is_file():
                    path.unlink()
        partial = tarball.with_suffix(".partial")
        _check(["tar", "-C", str(root), "--numeric-owner", "-cf", str(partial), "."])
        partial.rename(tarball)


def _check(argv: list[str], timeout: float = 300) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise BuildFailed(f"{' '.join(argv)} exited {done.returncode}: "
                          f"{(done.stderr or done.stdout).strip()[-2000:]}")


def build_image(engine: Engine, tag: str, context: Path = REPO_ROOT) -> None:
    """Build the project's Dockerfile as ``tag`` (base image made available first)."""
    ensure_base_image(engine, context / "Dockerfile")
    args = [f"--build-arg={name}={value}" for name, value in pip_build_args().items()]
    if engine.kind == "podman":
        # docker format: OCI images drop HEALTHCHECK; never: the base is local, no registry.
        args += ["--format", "docker", "--pull=never"]
    command = [*engine.command, *engine.with_flags("build", *args, "--tag", tag, str(context))]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise BuildFailed(f"{' '.join(command)} exited {done.returncode}:\n"
                          f"{(done.stdout + done.stderr)[-4000:]}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["build", "base", "which"])
    parser.add_argument("--tag", default="checkpoint-consumer:dev")
    parser.add_argument("--background", action="store_true",
                        help="base: install the engine now, make the image in a child process "
                             "(log: .local/container/base.log) and return at once")
    args = parser.parse_args(argv)
    if args.background and args.action == "base":
        return _base_in_background()
    try:
        engine = find_engine()
        if args.action == "which":
            print(" ".join([*engine.command, *engine.with_flags("run")]))
        elif args.action == "base":
            print(ensure_base_image(engine))
        else:
            build_image(engine, args.tag)
            print(args.tag)
    except (EngineUnavailable, BuildFailed) as error:
        print(f"container_engine: {error}", file=sys.stderr)
        return 1
    return 0


def _base_in_background() -> int:
    """Install the engine in the foreground (apt must not run beside another apt), then leave
    the base image to a detached child that holds the lock until it is made."""
    try:
        find_engine()
    except EngineUnavailable as error:
        print(f"container_engine: {error}", file=sys.stderr)
        return 1
    CACHE.mkdir(parents=True, exist_ok=True)
    log = CACHE / "base.log"
    with open(log, "w") as out:
        child = subprocess.Popen([sys.executable, __file__, "base"], stdout=out, stderr=out,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
    print(f"container_engine: making the base image in the background (pid {child.pid}, "
          f"log {log})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
