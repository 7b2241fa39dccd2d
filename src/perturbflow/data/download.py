"""Verified, resumable downloads of public data files.

:func:`download` streams a URL into ``<dest>.part``, resumes an interrupted transfer with an HTTP
``Range`` request, checks size and SHA-256 (and MD5 where the publisher lists one), and only then
renames the file into place, so ``dest`` either holds the verified bytes or does not exist.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import urllib.error
import urllib.request
from contextlib import nullcontext
from pathlib import Path
from urllib.parse import urlparse

logger = logging.getLogger(__name__)

_USER_AGENT = "perturbflow-download (Python urllib)"
_DIGEST_LENGTH = {"sha256": 64, "md5": 32}
_CONTENT_RANGE = re.compile(r"^bytes\s+(\d+)-(\d+)/(\d+|\*)$")


class DownloadError(OSError):
    """A transfer failed: HTTP error status, unreachable server, or an interrupted stream.

    ``status`` is the HTTP status code when the server answered, else ``None``. Where the partial
    file is worth keeping, it stays at ``<dest>.part`` and the next call resumes it.
    """

    def __init__(self, message: str, *, url: str, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status

    def __str__(self) -> str:
        return str(self.args[0])


class ChecksumMismatchError(ValueError):
    """A file's digest differs from the registered one; the message says what to do."""

    def __init__(
        self, message: str, *, url: str, path: Path, algorithm: str, expected: str, actual: str
    ) -> None:
        super().__init__(message)
        self.url = url
        self.path = path
        self.algorithm = algorithm
        self.expected = expected
        self.actual = actual


def file_sha256(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    return _digests(Path(path), ("sha256",), chunk_size)["sha256"]


def download(
    url: str,
    dest: str | Path,
    *,
    sha256: str,
    size: int | None = None,
    md5: str | None = None,
    progress: bool = False,
    timeout: float = 60,
    chunk_size: int = 1 << 20,
    overwrite: bool = False,
) -> Path:
    """Download ``url`` to ``dest`` and verify it; return ``dest``.

    Parameters
    ----------
    url
        ``http(s)://`` address of the file.
    dest
        Final path. Parent folders are created. The transfer goes to ``<dest>.part`` first.
    sha256
        Expected hex SHA-256 of the complete file (required: nothing unverified lands in place).
    size
        Expected size in bytes, checked before hashing; also catches a wrong file early from the
        server's ``Content-Length``.
    md5
        Optional publisher MD5 (e.g. Zenodo's), checked in the same pass as SHA-256.
    progress
        Show a rich progress bar.
    timeout
        Seconds to wait for the server on connect and on each read.
    chunk_size
        Bytes per read.
    overwrite
        Replace an existing ``dest`` whose checksum does not match instead of raising.

    An existing ``dest`` with the right checksum is returned without any network access.
    """
    if urlparse(url).scheme not in ("http", "https"):
        raise ValueError(f"{url!r}: only http:// and https:// URLs can be downloaded")
    dest = Path(dest)
    expected = {"sha256": _check_digest(sha256, "sha256")}
    if md5 is not None:
        expected["md5"] = _check_digest(md5, "md5")

    if dest.exists():
        mismatch = _verify(dest, expected, size, chunk_size)
        if mismatch is None:
            logger.info("%s: already present with the expected checksum; not downloading", dest)
            return dest
        if not overwrite:
            algorithm, want, got = mismatch
            raise ChecksumMismatchError(
                f"{dest} exists but its {algorithm} is {got}, not the registered {want} "
                f"(source {url}). It is not the expected file, or it is damaged; it was left "
                "untouched. Delete it, or pass overwrite=True to download it again.",
                url=url,
                path=dest,
                algorithm=algorithm,
                expected=want,
                actual=got,
            )
        logger.warning("%s: checksum mismatch; overwrite=True, downloading it again", dest)
        dest.unlink()

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_suffix(dest.suffix + ".part")
    if not (size is not None and part.exists() and part.stat().st_size == size):
        _fetch(url, part, size=size, progress=progress, timeout=timeout, chunk_size=chunk_size)

    mismatch = _verify(part, expected, size, chunk_size)
    if mismatch is not None:
        algorithm, want, got = mismatch
        part.unlink()
        raise ChecksumMismatchError(
            f"download of {url} has {algorithm} {got}, expected {want}. The partial file was "
            "deleted. Try again; if it fails the same way, the file at that URL has changed and "
            "the registered checksum needs updating (please report it).",
            url=url,
            path=dest,
            algorithm=algorithm,
            expected=want,
            actual=got,
        )
    os.replace(part, dest)
    logger.info("%s: downloaded and verified (sha256 %s)", dest, expected["sha256"])
    return dest


def _fetch(
    url: str, part: Path, *, size: int | None, progress: bool, timeout: float, chunk_size: int
) -> None:
    """Stream ``url`` into ``part``, resuming from its current length; one restart at most."""
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:
        logger.warning("%s: partial file is larger than the expected file; restarting", part)
        part.unlink()
        offset = 0
    response = _open(url, offset, timeout)
    if response is None:  # 416: the server cannot serve our range; the partial file is stale
        part.unlink(missing_ok=True)
        offset = 0
        response = _open(url, 0, timeout)
        assert response is not None  # without a Range header the server never answers 416
    with response:
        offset = _resume_offset(response, offset, url, part)
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else size
        if size is not None and total is not None and total != size:
            part.unlink(missing_ok=True)
            raise DownloadError(
                f"{url}: the server sends {total:,} bytes but the registry expects {size:,} "
                f"(HTTP status {response.status}); this is not the registered file. Check the "
                "URL, or report that the file has changed.",
                url=url,
                status=response.status,
            )
        if offset:
            logger.info("%s: resuming at byte %d", url, offset)
        received = _stream(response, part, offset, total, progress, chunk_size, url)
    if total is not None and offset + received < total:
        raise DownloadError(
            f"{url}: transfer ended early after {offset + received:,} of {total:,} bytes "
            f"(HTTP status {response.status}). The partial file is kept at {part}; call again to "
            "resume.",
            url=url,
            status=response.status,
        )


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse | None:
    """Send the GET request; ``None`` when the server answers 416 to a Range request."""
    headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (scheme checked above)
    except urllib.error.HTTPError as error:
        error.close()
        if error.code == 416 and offset:
            logger.warning("%s: server refused the resume range (416); restarting", url)
            return None
        raise DownloadError(
            f"{url}: HTTP status {error.code} ({error.reason}); the file cannot be downloaded "
            "now. Check the URL and try again later.",
            url=url,
            status=error.code,
        ) from error
    except urllib.error.URLError as error:
        raise DownloadError(
            f"{url}: cannot connect ({error.reason}); no HTTP status. Check the network and the "
            "URL, then call again (a partial download is resumed).",
            url=url,
        ) from error
    except (OSError, http.client.HTTPException) as error:
        raise DownloadError(
            f"{url}: request failed ({type(error).__name__}: {error}); no HTTP status. Call again "
            "to retry.",
            url=url,
        ) from error


def _resume_offset(response: http.client.HTTPResponse, offset: int, url: str, part: Path) -> int:
    """Where the body starts: ``offset`` after a matching 206, else 0 (the server restarted)."""
    if response.status == 206:
        match = _CONTENT_RANGE.match(response.headers.get("Content-Range", "").strip())
        if match and int(match.group(1)) == offset:
            return offset
        raise DownloadError(
            f"{url}: the server answered the resume request with an unexpected Content-Range "
            f"{response.headers.get('Content-Range')!r} (HTTP status 206); delete {part} and "
            "call again.",
            url=url,
            status=206,
        )
    if offset:
        logger.warning(
            "%s: server ignored the Range request (status %d); restarting", url, response.status
        )
        part.unlink(missing_ok=True)
    return 0


def _stream(
    response: http.client.HTTPResponse,
    part: Path,
    offset: int,
    total: int | None,
    progress: bool,
    chunk_size: int,
    url: str,
) -> int:
    """Append the response body to ``part``; return the number of bytes received."""
    received = 0
    with (
        _progress_bar() if progress else nullcontext() as bars,
        part.open("ab" if offset else "wb") as handle,
    ):
        if bars is not None:
            task = bars.add_task(part.name.removesuffix(".part"), total=total, completed=offset)
        try:
            while chunk := response.read(chunk_size):
                handle.write(chunk)
                received += len(chunk)
                if bars is not None:
                    bars.advance(task, len(chunk))
        except (OSError, http.client.HTTPException) as error:
            handle.flush()
            raise DownloadError(
                f"{url}: transfer interrupted after {offset + received:,} bytes "
                f"({type(error).__name__}: {error}; HTTP status {response.status}). The partial "
                f"file is kept at {part}; call again to resume.",
                url=url,
                status=response.status,
            ) from error
    return received


def _progress_bar():
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )


def _verify(
    path: Path, expected: dict[str, str], size: int | None, chunk_size: int
) -> tuple[str, str, str] | None:
    """``None`` when ``path`` matches; else ``(what, expected, actual)`` of the first mismatch."""
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        return "size", f"{size} bytes", f"{actual_size} bytes"
    actual = _digests(path, tuple(expected), chunk_size)
    for algorithm, want in expected.items():
        if actual[algorithm] != want:
            return algorithm, want, actual[algorithm]
    return None


def _digests(path: Path, algorithms: tuple[str, ...], chunk_size: int) -> dict[str, str]:
    hashers = {name: hashlib.new(name) for name in algorithms}
    with path.open("rb") as handle:
        while block := handle.read(chunk_size):
            for hasher in hashers.values():
                hasher.update(block)
    return {name: hasher.hexdigest() for name, hasher in hashers.items()}


def _check_digest(value: str, algorithm: str) -> str:
    digest = str(value).strip().lower()
    length = _DIGEST_LENGTH[algorithm]
    if not re.fullmatch(f"[0-9a-f]{{{length}}}", digest):
        raise ValueError(f"{algorithm} must be a hex digest of {length} characters, got {value!r}")
    return digest
