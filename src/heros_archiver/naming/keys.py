"""Object keys from rendered templates: the object-store side of path confinement.

An object store has no directories to escape, but a key is still a name that metadata from the network
helps build, and clients and tools read ``/`` as a directory separator: a key with ``..`` or ``.`` segments,
empty segments (``//``, a leading or trailing ``/``) or control characters would be written by one tool and
listed, synced or mirrored elsewhere by another. So a rendered key must be plain segments under the prefix,
never reach the archiver's own area (``.heros-archiver/``), and fit the 1024 bytes S3 allows. Lexical only,
which is all a key is.
"""

from __future__ import annotations

from ..errors import PathConfinementError, TemplateRenderError
from ..state.statedir import STATE_DIR_NAME

#: The longest key S3 accepts, in UTF-8 bytes.
MAX_KEY_BYTES = 1024


def key_problem(key: str) -> str | None:
    """Why ``key`` is not plain segments joined by ``/``, or None."""
    if not key:
        return "it is empty"
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in key):
        return "it contains a control character"
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        return f"it is longer than {MAX_KEY_BYTES} bytes"
    if any(segment in ("", ".", "..") for segment in key.split("/")):
        return "a segment is empty, '.' or '..' (a leading '/', a trailing '/' or '//' make an empty one)"
    return None


def confine_key(rendered: str, root_url: str, prefix: str, template: str = "") -> str:
    """The key (under ``prefix``) of what a template rendered: a key relative to the root, or the root's own
    ``s3://bucket/prefix/`` followed by one. Raises PathConfinementError when it leaves the prefix, names the
    archiver's area or is no plain key, TemplateRenderError when the render is empty or the key too long."""
    where = f" (template {template!r})" if template else ""
    if not rendered.strip():
        raise TemplateRenderError(f"rendered key is empty{where}")
    base = root_url.rstrip("/") + "/"
    relative = rendered[len(base) :] if rendered.startswith(base) else rendered
    key = f"{prefix}/{relative}" if prefix else relative
    problem = key_problem(relative)
    if problem is not None:
        raise PathConfinementError(f"rendered key {rendered!r} is not a plain key under {base!r}: {problem}{where}")
    if relative.split("/", 1)[0] == STATE_DIR_NAME:
        raise PathConfinementError(
            f"rendered key {rendered!r} is reserved for the archiver's own objects ({base}{STATE_DIR_NAME}/){where}"
        )
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise TemplateRenderError(
            f"rendered key {key[:120]!r}... is longer than the {MAX_KEY_BYTES} bytes of an S3 key{where}"
        )
    return key
