"""Downloading published files once into a local cache, optionally pinned by SHA-256.

Every loader accepts an ``http(s)`` URL where it accepts a path: :func:`fetch` downloads
it on first use (with a progress bar) into :func:`cache_dir` and answers from there
afterwards, remembering a 404 too. A file pinned to a SHA-256 digest is checked after
every download and on every read from the cache, so a changed or corrupted file is
never analysed silently (:class:`~refusalstats.dumps.errors.ChecksumError`). An unpinned
download records its digest beside it (``<file>.sha256``) and a cached copy that no
longer has it is refused (``refresh=True`` downloads it again).

Names that come from a dump (persona files, model folders) are data, never path parts:
:func:`check_name` refuses ``..``, separators and absolute paths before they reach a
URL or a path, and :func:`inside` refuses a file of a local clone that is a link out of
it. (Downloads use urllib rather than ``pooch.retrieve(known_hash=...)``: pooch is not
a dependency, and the 404 memory and the refresh rules here have tests of their own.)
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from .errors import ChecksumError, DumpError, DumpNotFound

_CACHE_ENV = "REFUSALSTATS_CACHE"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def cache_dir() -> Path:
    """The folder where downloaded dumps are cached.

    ``$REFUSALSTATS_CACHE`` when set, else the user cache folder of the platform
    (:func:`platformdirs.user_cache_dir`: ``~/.cache/refusalstats`` on Linux,
    ``~/Library/Caches/refusalstats`` on macOS, ``%LOCALAPPDATA%\\refusalstats\\Cache``
    on Windows).

    Returns
    -------
    Path
        The folder (it may not exist yet; :func:`fetch` creates it).

    Examples
    --------
    >>> import os
    >>> os.environ["REFUSALSTATS_CACHE"] = "/tmp/rs-cache"
    >>> str(cache_dir())
    '/tmp/rs-cache'
    >>> del os.environ["REFUSALSTATS_CACHE"]
    """
    env = os.environ.get(_CACHE_ENV)
    if env:
        return Path(env).expanduser()
    try:
        from platformdirs import user_cache_dir
    except ImportError:  # pragma: no cover - platformdirs comes with arviz
        return Path("~/.cache/refusalstats").expanduser()
    return Path(user_cache_dir("refusalstats", appauthor=False))


def sha256_of(path: str | Path) -> str:
    """The SHA-256 digest of a file, as 64 lower-case hex digits.

    Parameters
    ----------
    path : str or Path
        The file.

    Returns
    -------
    str
        The hex digest, the form :func:`fetch` and the loaders' ``sha256=`` take.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "x.txt"
    >>> _ = f.write_bytes(b"abc")
    >>> sha256_of(f)
    'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad'
    """
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_digest(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    digest = str(sha256).lower().removeprefix("sha256:")
    if not _HEX64.match(digest):
        raise ValueError(f"sha256 must be 64 hex digits (optionally 'sha256:...'), got {sha256!r}")
    return digest


def verify(path: str | Path, sha256: str | None, label: str | None = None) -> Path:
    """Check that a file has the SHA-256 it was pinned to.

    Parameters
    ----------
    path : str or Path
        The file.
    sha256 : str or None
        The expected digest (64 hex digits, optionally prefixed ``sha256:``); None
        checks nothing.
    label : str, optional
        How to name the file in the message (e.g. its URL); default the path.

    Returns
    -------
    Path
        ``path``, when it matches.

    Raises
    ------
    ChecksumError
        The digest differs; the message gives both.
    """
    path = Path(path)
    want = _check_digest(sha256)
    if want is None:
        return path
    got = sha256_of(path)
    if got != want:
        raise ChecksumError(
            f"{label or path}: SHA-256 is {got}, but it was pinned to {want}; the file changed "
            "or is corrupted. Check the source (a moved branch, a re-uploaded file) and update "
            "the pin only if the new file is the one you mean to analyse"
        )
    return path


def check_name(name: str, what: str, where: str) -> str:
    """``name`` unchanged when it is safe as one path segment, else :class:`DumpError`.

    A name read from a dump (a matrix row, a folder listing, a user's ``models=``) is
    refused when it is empty, ``.`` or ``..``, holds ``/``, ``\\`` or a NUL, or starts
    like an absolute path (``~``, a drive letter): it would name a file outside the dump.

    Examples
    --------
    >>> check_name("a_black_person", "persona", "m.csv")
    'a_black_person'
    >>> check_name("../../etc/evil", "persona", "m.csv")
    Traceback (most recent call last):
    ...
    refusalstats.dumps.errors.DumpError: m.csv: persona '../../etc/evil' cannot name a file (it holds '/' or '..'); a dump's names are data, not paths: fix the dump
    """
    text = str(name)
    bad = (text in ("", ".", "..") or any(ch in text for ch in ("/", "\\", "\x00"))
           or text.startswith("~") or re.match(r"^[A-Za-z]:", text) is not None)
    if bad:
        raise DumpError(f"{where}: {what} {text!r} cannot name a file (it holds '/' or '..'); "
                        "a dump's names are data, not paths: fix the dump")
    return text


def check_relative(rel: str, where: str) -> str:
    """A relative path under a dump's root whose every segment passes :func:`check_name`."""
    for seg in str(rel).split("/"):
        check_name(seg, "path part", where)
    return rel


def inside(path: Path, root: Path, label: str) -> Path:
    """``path`` when its real location (links resolved) is under ``root``'s, else DumpError.

    A file of a local clone that is a symbolic link out of the clone is refused, and its
    target is neither read nor quoted.
    """
    real = Path(path).resolve()
    base = Path(root).resolve()
    if real != base and not real.is_relative_to(base):
        raise DumpError(f"{label} is a link to a file outside the dump folder {root}; refused "
                        "(a dump's files must be its own: copy the file into the folder)")
    return path


def _is_url(x: object) -> bool:
    return isinstance(x, str) and x.lower().startswith(("http://", "https://"))


def _raw_github(url: str) -> str:
    """Turn ``https://github.com/<owner>/<repo>[/tree/<ref>[/path]]`` into the raw address."""
    parts = urllib.parse.urlsplit(url)
    if parts.netloc.lower() not in ("github.com", "www.github.com"):
        return url.rstrip("/")
    segs = [s for s in parts.path.split("/") if s]
    if len(segs) < 2:
        raise DumpError(f"'{url}' is not a repository address; use https://github.com/<owner>/<repo>")
    owner, repo = segs[0], segs[1].removesuffix(".git")
    ref, rest = "main", []
    if len(segs) >= 4 and segs[2] in ("tree", "blob"):
        ref, rest = segs[3], segs[4:]
    return "/".join(["https://raw.githubusercontent.com", owner, repo, ref, *rest])


def _cache_path(url: str, root: Path) -> Path:
    """Where ``url`` is cached under ``root``: host, then the URL's path segments."""
    parts = urllib.parse.urlsplit(url)
    segs = [re.sub(r"[^A-Za-z0-9._-]", "_", s) for s in parts.path.split("/") if s not in ("", ".", "..")]
    if not segs:
        segs = ["index"]
    if parts.query:
        digest = hashlib.sha1(parts.query.encode()).hexdigest()[:10]
        segs[-1] = f"{segs[-1]}-{digest}"
    host = re.sub(r"[^A-Za-z0-9._-]", "_", parts.netloc) or "host"
    return root.joinpath(host, *segs)


def _urlopen(request: urllib.request.Request, timeout: float):
    """The network seam (tests replace it); returns a file-like HTTP response."""
    return urllib.request.urlopen(request, timeout=timeout)


def fetch(
    url: str,
    *,
    cache: str | Path | None = None,
    refresh: bool = False,
    progress: bool = True,
    timeout: float = 60.0,
    sha256: str | None = None,
) -> Path:
    """Download ``url`` into the cache (once) and return the local path.

    Parameters
    ----------
    url : str
        An ``http://`` or ``https://`` address.
    cache : str or Path, optional
        Cache folder; defaults to :func:`cache_dir`.
    refresh : bool
        Download again even when the file is cached.
    progress : bool
        Show a tqdm progress bar (bytes, with the total when the server sends it).
    timeout : float
        Seconds to wait for the server.
    sha256 : str, optional
        The file's expected SHA-256 (64 hex digits). A cached copy that differs is
        downloaded again; a download that differs is deleted and raises.

    Returns
    -------
    Path
        The cached file.

    Raises
    ------
    DumpNotFound
        The server answered 404 (remembered in the cache until ``refresh=True``).
    ChecksumError
        The downloaded file does not have the pinned ``sha256``.
    DumpError
        Any other HTTP or connection failure.

    Examples
    --------
    >>> p = fetch("https://raw.githubusercontent.com/peluz/persona-behavior/main/"
    ...           "data/persona_cat.json")  # doctest: +SKIP
    """
    if not _is_url(url):
        raise ValueError(f"fetch() needs an http(s) URL, got {url!r}")
    digest = _check_digest(sha256)
    root = Path(cache).expanduser() if cache is not None else cache_dir()
    dest = _cache_path(url, root)
    absent = dest.with_name(dest.name + ".404")
    record = dest.with_name(dest.name + ".sha256")
    if not refresh:
        if dest.is_file() and digest is not None and sha256_of(dest) == digest:
            return dest
        if dest.is_file() and digest is None:
            got = sha256_of(dest)
            want = record.read_text().strip() if record.is_file() else None
            if want is None:
                record.write_text(got + "\n")  # a cache from before digests were recorded
            elif got != want:
                raise ChecksumError(
                    f"{url}: the cached copy {dest} changed since it was downloaded (SHA-256 "
                    f"{got}, recorded {want}); pass refresh=True (or delete it) to download it "
                    "again, and pin the file with sha256= to be told when the source changes")
            return dest
        if absent.is_file():  # remembered 404: the cache answers offline too
            raise DumpNotFound(
                f"{url} does not exist (HTTP 404, remembered in {absent}; pass refresh=True "
                "or delete that file to ask the server again)"
            )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    from .. import __version__

    request = urllib.request.Request(url, headers={"User-Agent": f"refusalstats/{__version__}"})
    try:
        with _urlopen(request, timeout) as resp:
            length = resp.headers.get("Content-Length") if getattr(resp, "headers", None) else None
            total = int(length) if length and str(length).isdigit() else None
            with open(tmp, "wb") as fh, tqdm(
                total=total, unit="B", unit_scale=True, unit_divisor=1024,
                desc=f"downloading {dest.name}", disable=not progress, leave=False,
            ) as bar:
                while True:
                    chunk = resp.read(1 << 16)
                    if not chunk:
                        break
                    fh.write(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as exc:
        tmp.unlink(missing_ok=True)
        if exc.code == 404:
            absent.touch()
            raise DumpNotFound(
                f"{url} does not exist (HTTP 404); check the owner, repository, branch and path"
            ) from None
        raise DumpError(f"could not download {url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        tmp.unlink(missing_ok=True)
        reason = getattr(exc, "reason", exc)
        raise DumpError(
            f"could not download {url}: {reason}. Check the address and your connection, "
            "or download the files yourself and pass the local path"
        ) from None
    try:
        verify(tmp, digest, url)
    except ChecksumError:
        tmp.unlink(missing_ok=True)
        raise
    got = digest or sha256_of(tmp)
    rec_tmp = record.with_name(record.name + ".part")
    rec_tmp.write_text(got + "\n")
    tmp.replace(dest)
    rec_tmp.replace(record)
    absent.unlink(missing_ok=True)
    return dest


def _local(path_or_url: str | Path, *, progress: bool = True, sha256: str | None = None) -> Path:
    """A local path for a path or URL (URLs are fetched into the cache), checked against
    ``sha256`` when given."""
    if _is_url(path_or_url):
        return fetch(str(path_or_url), progress=progress, sha256=sha256)
    p = Path(path_or_url).expanduser()
    if not p.exists():
        raise DumpNotFound(f"no such file or folder: '{p}'")
    return verify(p, sha256) if p.is_file() else p
