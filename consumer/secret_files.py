"""Secrets read from files, the way Kubernetes and Docker mount them: ``kafka.sasl_password_file``
and ``store.url_file`` in :mod:`consumer.settings`.

Read once, while the settings load; a problem (no such file, unreadable, empty, not UTF-8) is a
``ValueError`` naming the setting and the file, which the settings report as a config error.
The secret itself never appears in a message. Vocabulary: imports nothing of the project.
"""

from __future__ import annotations

from pathlib import Path


def read_secret_file(path: Path, *, setting: str) -> str:
    """The file's text less one trailing newline (``echo`` and most editors add one; the
    secret does not contain it)."""
    try:
        text = path.read_text(encoding="utf-8")
    except IsADirectoryError:
        raise ValueError(f"{setting}: {path} is a directory, not a file; point it at the file "
                         "holding the secret") from None
    except OSError as error:
        raise ValueError(f"{setting}: cannot read {path} ({error.strerror}); mount the secret "
                         "there, let this process read it, or unset the setting") from None
    except UnicodeDecodeError:
        raise ValueError(f"{setting}: {path} is not UTF-8 text") from None
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    if not text.strip():
        raise ValueError(f"{setting}: {path} is empty; the secret is missing from the file "
                         "(an empty Kubernetes Secret key?)")
    return text


def both_given(setting: str, file_setting: str) -> ValueError:
    """The error for a secret given both inline and by file: which one wins would be a guess."""
    return ValueError(f"{setting} and {file_setting} are both set; keep one (the file, where "
                      "the platform mounts the secret)")
