"""Who may use ``interdyn app`` and which of the serving machine's files its page may read.

On the loopback interface (the default, ``127.0.0.1``) the page is its user's own: the "path on this
machine" box reads any image, video or clip folder the user can read. Served beyond this machine
(``--host 0.0.0.0``, another address, or ``--share``) anyone who reaches the port uses the page, so the
box reads nothing unless ``--root DIR`` names a folder, and then only paths under it, with one message
for a path outside it and a path that does not exist (the page tells nothing about the rest of the disk).
A warning says so at start; ``--auth user:password`` (or ``--auth_file``) asks for a login.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from interdyn.errors import InputError

LOOPBACK_NAMES = {"localhost", "ip6-localhost", "ip6-loopback"}


def is_loopback(host: str) -> bool:
    """Whether ``host`` binds only this machine's loopback interface (``127.x``, ``::1``, ``localhost``)."""
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


@dataclass(frozen=True)
class ServerFiles:
    """Which server paths the page may read: any (``open``), those under ``root``, or none."""

    open: bool = True
    root: Path | None = None

    @classmethod
    def for_host(cls, host: str, share: bool = False, root: str | Path | None = None) -> ServerFiles:
        """Any path on loopback without a share link; under ``root`` when one is given; else none."""
        if root is not None:
            folder = Path(root).expanduser().resolve()
            if not folder.is_dir():
                raise InputError(f"--root '{root}' is not a folder.")
            return cls(open=False, root=folder)
        return cls(open=is_loopback(host) and not share)

    @property
    def enabled(self) -> bool:
        """Whether the page may read server paths at all."""
        return self.open or self.root is not None

    def describe(self) -> str:
        """The page's label for the path box."""
        if self.open:
            return "path on this machine: image, video or clip folder (video.* + mask_*.*)"
        if self.root is not None:
            return f"path under {self.root} on the server: image, video or clip folder"
        return "paths on the server are off (the app is served beyond this machine; start it with --root DIR)"

    def resolve(self, text: str) -> Path:
        """The server path ``text`` names, or one sentence saying it cannot be read. Under a root, a path
        outside it and a missing one get the same sentence."""
        text = str(text or "").strip()
        if not self.enabled:
            raise InputError(
                "reading files on the server is off: the app is served beyond this machine (its owner can "
                "allow a folder with --root); upload the file instead."
            )
        if not text:
            raise InputError("type the path of an image, a video or a clip folder.")
        if self.open:
            path = Path(text).expanduser()
            if not path.exists():
                raise InputError(f"'{path}' does not exist.")
            return path
        assert self.root is not None
        given = Path(text)
        path = (given if given.is_absolute() else self.root / given).resolve()  # symlinks followed
        if not path.is_relative_to(self.root) or not path.exists():
            raise InputError(f"there is no image, video or clip folder '{text}' under the app's root folder.")
        return path


def read_auth(auth: str | None, auth_file: str | None) -> list[tuple[str, str]] | None:
    """Gradio's ``auth`` from ``--auth user:password`` and/or ``--auth_file`` (one ``user:password`` a
    line, ``#`` comments); None when neither is given."""
    lines: list[tuple[str, str]] = []
    given = [("--auth", auth)] if auth else []
    if auth_file:
        try:
            text = Path(auth_file).expanduser().read_text()
        except OSError as err:
            raise InputError(f"cannot read --auth_file '{auth_file}' ({err.strerror}).") from None
        given += [(f"--auth_file line {k}", line.strip()) for k, line in enumerate(text.splitlines(), 1)]
    for where, entry in given:
        if not entry or entry.startswith("#"):
            continue
        user, sep, password = entry.partition(":")
        if not sep or not user or not password:
            raise InputError(f"{where} must be user:password with neither part empty.")
        lines.append((user, password))
    if (auth or auth_file) and not lines:
        raise InputError(f"--auth_file '{auth_file}' holds no user:password line.")
    return lines or None


def exposure_warning(host: str, port: int, share: bool, files: ServerFiles, login: bool) -> str | None:
    """The warning printed at start when the page is reachable from other machines, else None."""
    if is_loopback(host) and not share:
        return None
    where = "a public Gradio share link" if share else f"{host}:{port}"
    parts = [f"the app is served on {where}: anyone who reaches it can generate on this machine"]
    parts.append("with the login of --auth" if login else "without a login (add --auth user:password)")
    if files.root is not None:
        parts.append(f"and read files under {files.root}")
    else:
        parts.append("and no server files can be read (--root DIR allows a folder)")
    return "interdyn app: warning: " + ", ".join(parts) + "."
