"""A real Confluent-compatible schema registry on loopback: Apicurio Registry from Maven Central.

    python scripts/registry_local.py start     # prints the Confluent API's URL
    python scripts/registry_local.py status    # "running URL" or "stopped" (exit 3)
    python scripts/registry_local.py stop

The distribution (``io.apicurio:apicurio-registry-app:3.0.9``, classifier ``all``, a tar.gz of
about 104 MiB) is downloaded once from Maven Central into
``~/.cache/checkpoint-consumer/apicurio-registry-3.0.9/`` (``$CONSUMER_REGISTRY_CACHE`` moves
it) and unpacked there, so a second start works offline. It runs on Java 17 with in-memory
storage (H2): every start is an empty registry, and ``stop`` forgets every schema. HTTP and
management listen on 127.0.0.1, on free ports. Ready means the Confluent API answers
(``GET /apis/ccompat/v7/subjects``). Logs stay in ``.local/registry/`` for post-mortems.

Environment: ``CONSUMER_REGISTRY_PORT`` fixes the HTTP port, ``CONSUMER_REGISTRY_JVM_OPTS``
replaces the JVM options, ``CONSUMER_LOCAL_STATE`` moves the state folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from localproc import (
    JAVA_PACKAGE,
    LocalServiceError,
    cache_root,
    free_port,
    jvm_options,
    log_tail,
    read_pid,
    require_program,
    running_address,
    state_dir,
    stop_pid,
    wait_until,
)

VERSION = "3.0.9"
ARTIFACT = (f"https://repo1.maven.org/maven2/io/apicurio/apicurio-registry-app/{VERSION}/"
            f"apicurio-registry-app-{VERSION}-all.tar.gz")
RUNNER = f"apicurio-registry-app-{VERSION}-runner.jar"
#: Where the Confluent-compatible API lives under the registry's address.
CCOMPAT = "/apis/ccompat/v7"
JVM_OPTS = ["-Xms64m", "-Xmx384m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
            "-Djava.awt.headless=true"]
READY_TIMEOUT_S = 90.0
DOWNLOAD_TIMEOUT_S = 300.0


def _say(text: str) -> None:
    print(f"registry-local: {text}", file=sys.stderr, flush=True)


def _cache_dir() -> Path:
    return cache_root("CONSUMER_REGISTRY_CACHE") / f"apicurio-registry-{VERSION}"


def ensure_distribution() -> Path:
    """Download and unpack the distribution into the cache (once); return the runner jar."""
    cache = _cache_dir()
    runner = cache / "dist" / RUNNER
    if (cache / "complete").exists() and runner.exists():
        return runner
    cache.mkdir(parents=True, exist_ok=True)
    archive = cache / "dist.tar.gz"
    _say(f"downloading {ARTIFACT} into {cache} (first start only)")
    began = time.monotonic()
    try:
        with urllib.request.urlopen(ARTIFACT, timeout=DOWNLOAD_TIMEOUT_S) as response, \
                archive.open("wb") as out:
            shutil.copyfileobj(response, out, 1 << 20)
    except (urllib.error.URLError, OSError) as error:
        archive.unlink(missing_ok=True)
        raise LocalServiceError(
            f"could not download Apicurio Registry from Maven Central ({error}); is "
            "repo1.maven.org reachable (a proxy in HTTPS_PROXY)?") from error
    size = archive.stat().st_size
    partial = cache / "dist.partial"
    shutil.rmtree(partial, ignore_errors=True)
    with tarfile.open(archive) as tar:
        tar.extractall(partial, filter="data")
    if not (partial / RUNNER).exists():
        raise LocalServiceError(f"{ARTIFACT} holds no {RUNNER}; the artifact's layout changed")
    shutil.rmtree(cache / "dist", ignore_errors=True)
    partial.rename(cache / "dist")
    archive.unlink()
    (cache / "complete").write_text(time.strftime("%Y-%m-%dT%H:%M:%S"))
    _say(f"downloaded {size / 2**20:.0f} MiB and unpacked in {time.monotonic() - began:.1f} s")
    return runner


def _paths() -> dict[str, Path]:
    base = state_dir("registry")
    return {"base": base, "pid": base / "registry.pid", "url": base / "url",
            "log": base / "registry.log"}


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/subjects", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def running_url() -> str | None:
    """The Confluent API URL of the registry this launcher started, if it is alive."""
    paths = _paths()
    return running_address(paths["pid"], paths["url"])


def start() -> str:
    """Start the registry (or find the one already running); return its Confluent API URL,
    e.g. ``http://127.0.0.1:PORT/apis/ccompat/v7``."""
    existing = running_url()
    if existing and _answers(existing):
        return existing
    if existing:
        stop()
    runner = ensure_distribution()
    paths = _paths()
    fixed = os.environ.get("CONSUMER_REGISTRY_PORT")
    port = int(fixed) if fixed else free_port()
    management = free_port()
    while management == port:
        management = free_port()
    java = require_program("java", "to run Apicurio Registry (Java 17 or newer)",
                           package=JAVA_PACKAGE)
    command = [java, *jvm_options("CONSUMER_REGISTRY_JVM_OPTS", JVM_OPTS),
               "-Dquarkus.http.host=127.0.0.1", f"-Dquarkus.http.port={port}",
               "-Dquarkus.management.host=127.0.0.1", f"-Dquarkus.management.port={management}",
               "-Dapicurio.storage.kind=sql", "-Dapicurio.storage.sql.kind=h2",
               "-jar", str(runner)]
    began = time.monotonic()
    with paths["log"].open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, cwd=runner.parent,
                                   start_new_session=True)
    paths["pid"].write_text(str(process.pid))
    url = f"http://127.0.0.1:{port}{CCOMPAT}"

    def died() -> str | None:
        if process.poll() is None:
            return None
        return (f"the registry exited with code {process.returncode} while starting. "
                f"Last lines of {paths['log']}:\n{log_tail(paths['log'], 20)}")

    try:
        if not wait_until(lambda: _answers(url), timeout=READY_TIMEOUT_S, interval=0.2,
                          failed=died):
            raise LocalServiceError(
                f"the registry did not answer on {url} within {READY_TIMEOUT_S:.0f} s. "
                f"Last lines of {paths['log']}:\n{log_tail(paths['log'], 20)}")
    except BaseException:
        stop_pid(process.pid, timeout=10)
        paths["pid"].unlink(missing_ok=True)
        raise
    paths["url"].write_text(url)
    _say(f"registry ready on {url} in {time.monotonic() - began:.1f} s (log: {paths['log']})")
    return url


def stop() -> None:
    """Stop the registry (SIGTERM, then SIGKILL after 20 s); its schemas are gone with it."""
    paths = _paths()
    pid = read_pid(paths["pid"])
    if pid is not None:
        stop_pid(pid, timeout=20)
    for key in ("pid", "url"):
        paths[key].unlink(missing_ok=True)


def main(argv: list[str]) -> int:
    usage = "usage: registry_local.py start|stop|status"
    try:
        if argv == ["start"]:
            print(start(), flush=True)
            return 0
        if argv == ["stop"]:
            stop()
            return 0
        if argv == ["status"]:
            url = running_url()
            print("stopped" if url is None else f"running {url}")
            return 3 if url is None else 0
    except LocalServiceError as error:
        _say(f"error: {error}")
        return 1
    print(usage, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
