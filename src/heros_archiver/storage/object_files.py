"""The file-per-item writes of ``atomic.write_unless_present``, for objects under an ``s3://bucket/prefix`` root.

Same names, same ``on_exists`` policies, same answer to a retry: ``error`` is a conditional create
(``If-None-Match: *``), so two writers never overwrite each other; ``unique`` tries ``name-1``, ``name-2``,
... each by conditional create (after one listing of the taken names); ``overwrite`` replaces. A key already
holding exactly the bytes we would write counts as written (a PUT under ``error`` that succeeded but whose answer
was lost, a replayed item), as a file does; under ``unique`` only for a resumed item, since two events with
the same bytes are two objects there. An object is whole or absent by the store's own semantics, so there is no
temporary to clean up, and the item counts as archived only once the PUT returned.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import PurePosixPath

from ..errors import TargetExistsError
from ..formats.base import Content
from ..naming.keys import confine_key
from .atomic import OnExists
from .objectstore import ObjectLocation, ObjectStore

_MAX_UNIQUE = 10_000


class ObjectFiles:
    """Writes one item's "files" as objects of ``store`` under ``location``; paths are ``s3://bucket/key``."""

    def __init__(self, store: ObjectStore, location: ObjectLocation) -> None:
        if store.bucket != location.bucket:
            raise ValueError(f"store of bucket {store.bucket!r} for a location in bucket {location.bucket!r}")
        self.store = store
        self.location = location
        self.root_url = location.url()
        self._bucket_url = f"s3://{location.bucket}/"

    def name(self, rendered: str, template: str) -> str:
        """The ``s3://bucket/key`` of a rendered template, confined to the prefix (``naming.keys``)."""
        return self._bucket_url + confine_key(rendered, self.root_url, self.location.prefix, template)

    def write(self, url: str, content: Content, on_exists: OnExists, resumed: bool) -> str | None:
        """Write ``url`` under ``on_exists``; return the URL written, or None when the object (or, resumed
        under ``unique``, one of its ``-N``) already holds ``content``. Raises TargetExistsError (``error``,
        or no free ``-N``), StorageError (transient) or InvalidTargetError (the store refuses the item)."""
        key = self._key(url)
        store = self.store
        if on_exists == "overwrite":
            store.put(key, content)
            return url
        if on_exists == "unique" and resumed and self._identical_unique_name(key, content):
            return None
        try:
            store.put_new(key, content)
            return url
        except TargetExistsError:
            if on_exists == "error":
                if self._holds(key, content):
                    return None
                raise
        taken = {info.key for info in store.list(_stem(key))}
        for candidate in _unique_keys(key):
            if candidate in taken:
                continue
            try:
                store.put_new(candidate, content)
                return self._bucket_url + candidate
            except TargetExistsError:
                continue  # taken meanwhile by another writer
        raise TargetExistsError(f"{url}: no free unique name among {_MAX_UNIQUE} suffixes")

    def remove(self, url: str) -> None:
        """Remove an object this writer wrote (the other parts of an item that failed midway)."""
        self.store.delete(self._key(url))

    def _key(self, url: str) -> str:
        if not url.startswith(self._bucket_url):
            raise ValueError(f"{url!r} is not in the bucket of {self.root_url!r}")
        return url[len(self._bucket_url) :]

    def _holds(self, key: str, content: Content) -> bool:
        """Whether ``key`` holds exactly ``content``: the size first, the bytes only when it matches."""
        info = self.store.head(key)
        size = sum(memoryview(chunk).nbytes for chunk in content)
        if info is None or info.size != size:
            return False
        return self.store.get(key) == b"".join(content)

    def _identical_unique_name(self, key: str, content: Content) -> bool:
        """Whether ``key`` or one of its ``-N`` (up to the first free one) holds ``content``."""
        for candidate in (key, *_unique_keys(key)):
            if self.store.head(candidate) is None:
                return False
            if self._holds(candidate, content):
                return True
        return False


def _stem(key: str) -> str:
    """What every ``-N`` variant of ``key`` starts with (for one listing of the taken ones)."""
    path = PurePosixPath(key)
    return str(path.with_name(path.stem))


def _unique_keys(key: str) -> Iterator[str]:
    """``name-1.npy``, ``name-2.npy``, ... (the suffix goes before the extension, as for files)."""
    path = PurePosixPath(key)
    stem, suffix = path.stem, path.suffix
    for i in range(1, _MAX_UNIQUE):
        yield str(path.with_name(f"{stem}-{i}{suffix}"))
