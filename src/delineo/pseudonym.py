"""Keyed pseudonyms of patient identifiers, for logs: an HMAC-SHA-256 with a per-installation key
kept in a file (``pseudonym.key``, 64 hex digits, mode 0600), so that a pseudonym cannot be turned
back into a record number by trying them all without that file. Used by the web service's access
log (:mod:`delineo.service.audit`, key beside the database) and the DICOM node's log lines (key in
the node's storage folder). Back the key up with what it protects: a new key gives new pseudonyms.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path

log = logging.getLogger("delineo.pseudonym")

#: the key's file name, in the folder given to :func:`load_secret`
SECRET_FILE = "pseudonym.key"


def load_secret(home: Path) -> bytes:
    """This installation's pseudonym key: ``home/pseudonym.key`` (64 hex digits), made with
    permissions 0600 the first time (atomically: two processes starting together get the same
    one). Losing or replacing it changes every pseudonym written after; back it up with the database."""
    path = Path(home) / SECRET_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, (secrets.token_hex(32) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # never replaces a key another process made meanwhile
            log.info("made the pseudonym key %s: back it up with the data it pseudonymises", path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)
        log.warning("%s was readable by others; its permissions are now 0600", path)
    text = path.read_text().strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < 16:
        raise RuntimeError(f"{path}: not a pseudonym key (expected 64 hex digits); restore it from the backup "
                           "(removing it makes a new key, and patients get new pseudonyms)")
    return key


def keyed_pseudonym(key: bytes, value: str, digits: int = 16) -> str:
    """The first ``digits`` hex digits of HMAC-SHA-256(``key``, ``value``)."""
    return hmac.new(key, str(value).encode(), hashlib.sha256).hexdigest()[:digits]
