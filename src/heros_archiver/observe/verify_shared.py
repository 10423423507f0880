"""Verify the archives a shared PostgreSQL catalog names: those this host can reach, and say which it cannot.

A shared catalog (decision 0037) holds the items of many archivers on many hosts, each row naming its ``host``
and archive ``root`` (absolute, as the archiver saw it). Verify reads files, so it checks the roots of its own
host (``host``, default this machine's name, as the archivers write it), each as ``verify`` checks one root;
the roots of other hosts are listed as skipped with their item counts, since their paths may mean nothing
here. Where the roots are shared (the same file system mounted at the same path on every host),
``all_hosts=True`` checks every root, the rows of all hosts under it together.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .catalog_backend import open_reader, this_host
from .verify import VerifyReport, verify_root

__all__ = ["SharedVerifyReport", "Skipped", "verify_shared"]


@dataclass(frozen=True)
class Skipped:
    """An archive root of another host, not checked here."""

    host: str
    root: str
    items: int

    @property
    def line(self) -> str:
        return f"skipped: {self.items} item(s) of host {self.host} under {self.root} (another host's files)"


@dataclass
class SharedVerifyReport:
    """One report per root checked, and the roots skipped."""

    catalog: str
    #: whose roots were checked (None: all hosts')
    host: str | None
    reports: list[VerifyReport] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(report.ok for report in self.reports)

    def as_dict(self) -> dict[str, Any]:
        return {
            "catalog": self.catalog,
            "host": self.host,
            "ok": self.ok,
            "reports": [report.as_dict() for report in self.reports],
            "skipped": [{"host": s.host, "root": s.root, "items": s.items} for s in self.skipped],
        }


def verify_shared(
    url: str,
    *,
    host: str | None = None,
    all_hosts: bool = False,
    roots: list[str | os.PathLike[str]] | None = None,
    **options: Any,
) -> SharedVerifyReport:
    """Verify the roots of ``host`` (default this machine's name) that the catalog at ``url`` names, or with
    ``all_hosts`` every root; only those of ``roots`` when given. ``options`` are ``verify``'s (``orphans``,
    ``workers``, ...). Raises CatalogError when the catalog cannot be read."""
    own = host or this_host()
    wanted = None if roots is None else {os.path.abspath(root) for root in roots}
    with open_reader(url=url) as catalog:
        report = SharedVerifyReport(catalog.where, None if all_hosts else own)
        per_root: dict[str, list[tuple[str, int]]] = defaultdict(list)
        for row_host, row_root, items in catalog.roots():
            if wanted is None or row_root in wanted:
                per_root[str(row_root)].append((str(row_host), items))
        for root, hosts in sorted(per_root.items()):
            if all_hosts:
                report.reports.append(verify_root(catalog, Path(root), (None, root), **options))
                continue
            report.skipped += [Skipped(other, root, items) for other, items in hosts if other != own]
            if any(other == own for other, _ in hosts):
                report.reports.append(verify_root(catalog, Path(root), (own, root), **options))
    return report
