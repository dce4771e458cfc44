"""The site secret: where it lives, how it is read, created and checked."""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import Mapping
from pathlib import Path

from sendit_helpers.core.errors import SettingsError

__all__ = [
    "SECRET_ENV",
    "load_site_secret",
    "site_secret_path",
]


SECRET_ENV = "SENDIT_SITE_SECRET"
"""Environment variable that, when set and non-empty, is the site secret."""


def site_secret_path(work: Path) -> Path:
    """Return ``WORK/.site/phi/site_secret.key``."""
    return Path(work) / ".site" / "phi" / "site_secret.key"


def _parse_secret(text: str) -> bytes:
    t = text.strip()
    if t and len(t) % 2 == 0 and re.fullmatch(r"[0-9A-Fa-f]+", t):
        return bytes.fromhex(t)
    return t.encode("utf-8")


def _read_secret_file(path: Path) -> bytes:
    # A racing creator writes before linking, so the file is complete; the
    # short wait only covers filesystems without hard links (O_EXCL fallback).
    for _ in range(50):
        data = path.read_bytes()
        if data.strip():
            try:
                return _parse_secret(data.decode("ascii"))
            except UnicodeDecodeError:
                return data
        time.sleep(0.05)
    raise SettingsError(
        f"site secret {path} is empty; delete it only if no batch was released with it "
        "(pseudonyms would change), or restore it from backup"
    )


def _tighten(path: Path, mode: int) -> None:
    try:
        if path.stat().st_mode & 0o777 != mode:
            os.chmod(path, mode)
    except PermissionError:
        pass


def load_site_secret(work: Path, environ: Mapping[str, str] = os.environ) -> bytes:
    """Return the site secret, creating it on first use.

    ``SENDIT_SITE_SECRET`` wins when set and non-blank: an even-length hex
    string is decoded, anything else is taken as UTF-8 text.  Otherwise the
    secret is ``WORK/.site/phi/site_secret.key`` (64 hex characters, so its
    contents can be copied into ``SENDIT_SITE_SECRET`` unchanged), created
    with 32 random bytes on first use: folder 0700, file 0600, created
    atomically (written to a unique temporary file then hard-linked into
    place, which fails if another process won the race; the loser re-reads
    the winner's file).

    Parameters
    ----------
    work : Path
        The work root.
    environ : Mapping[str, str]
        Environment to read ``SENDIT_SITE_SECRET`` from.

    Returns
    -------
    bytes
        The secret.
    """
    env = environ.get(SECRET_ENV, "")
    if env.strip():
        return _parse_secret(env)
    path = site_secret_path(work)
    for folder in (path.parent.parent, path.parent):
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        _tighten(folder, 0o700)
    if path.exists():
        _tighten(path, 0o600)
        return _read_secret_file(path)
    text = (secrets.token_bytes(32).hex() + "\n").encode("ascii")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return _read_secret_file(path)
        except OSError:
            # No hard links here: fall back to creating the file itself exclusively.
            try:
                fd2 = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                return _read_secret_file(path)
            with os.fdopen(fd2, "wb") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
    finally:
        tmp.unlink(missing_ok=True)
    return _parse_secret(text.decode("ascii"))
