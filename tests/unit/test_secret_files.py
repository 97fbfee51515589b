"""consumer.secret_files: a mounted secret is read once, one trailing newline dropped, and every
problem is an error naming the setting and the file, never the secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from consumer.secret_files import read_secret_file


@pytest.mark.parametrize(("content", "secret"), [
    ("s3cret\n", "s3cret"),
    ("s3cret\r\n", "s3cret"),
    ("s3cret", "s3cret"),
    ("s3cret\n\n", "s3cret\n"),  # one newline only: the rest belongs to the secret
    (" spaced out ", " spaced out "),
])
def test_one_trailing_newline_is_dropped(tmp_path: Path, content: str, secret: str) -> None:
    path = tmp_path / "secret"
    path.write_bytes(content.encode())
    assert read_secret_file(path, setting="kafka.sasl_password_file") == secret


def test_a_missing_file_names_the_setting_and_the_path(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"kafka.sasl_password_file: cannot read .*nope "
                                         r"\(No such file or directory\)"):
        read_secret_file(tmp_path / "nope", setting="kafka.sasl_password_file")


def test_an_unreadable_path_says_why(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"cannot read .*file/secret \(Not a directory\)"):
        read_secret_file(tmp_path / "file" / "secret", setting="store.url_file")


def test_a_directory_is_not_a_secret_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"store.url_file: .* is a directory"):
        read_secret_file(tmp_path, setting="store.url_file")


@pytest.mark.parametrize("content", ["", "\n", "  \n"])
def test_an_empty_file_is_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "secret"
    path.write_text(content)
    with pytest.raises(ValueError, match=r"store.url_file: .*secret is empty"):
        read_secret_file(path, setting="store.url_file")


def test_a_file_that_is_not_text_is_refused_without_showing_it(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(b"\xff\xfepassword")
    with pytest.raises(ValueError, match="not UTF-8 text") as caught:
        read_secret_file(path, setting="store.url_file")
    assert "password" not in str(caught.value).replace(str(path), "")
