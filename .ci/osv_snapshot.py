"""Answer pip-audit's OSV queries from a local snapshot of the advisory database, for
machines that cannot reach a vulnerability service (run by ``.ci/audit``).

The snapshot is a directory of OSV JSON records, e.g. osv.dev's PyPI export unpacked:
``https://osv-vulnerabilities.storage.googleapis.com/PyPI/all.zip``. This serves
``POST /v1/query`` (the one call pip-audit's ``--osv-url`` makes) on 127.0.0.1 and
prints the port; a record matches when the queried version is listed in its
``affected[].versions`` or lies inside one of its ECOSYSTEM ``ranges``
(introduced <= version < fixed, or <= last_affected). Withdrawn records are skipped.

Usage: python .ci/osv_snapshot.py DIRECTORY  (prints "port N", serves until killed)
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version


def load(directory: Path) -> dict[str, list[dict[str, Any]]]:
    """Package name (canonical) -> the records that name it."""
    records: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for path in directory.rglob("*.json"):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(record, dict) or record.get("withdrawn"):
            continue
        for affected in record.get("affected") or []:
            package = affected.get("package") or {}
            if package.get("ecosystem") == "PyPI" and package.get("name"):
                records[canonicalize_name(package["name"])].append(record)
    return records


def _in_range(version: Version, events: list[dict[str, str]]) -> bool:
    """Walk the ordered events: an ``introduced`` at or below the version opens a span,
    a ``fixed`` at or below it (or a ``last_affected`` below it) closes it."""
    inside = False
    for event in events:
        try:
            if "introduced" in event:
                if event["introduced"] == "0" or version >= Version(event["introduced"]):
                    inside = True
            elif ("fixed" in event and version >= Version(event["fixed"])) or (
                    "last_affected" in event and version > Version(event["last_affected"])):
                inside = False
        except InvalidVersion:
            continue
    return inside


def affects(record: dict[str, Any], name: str, version: str) -> bool:
    try:
        parsed = Version(version)
    except InvalidVersion:
        return False
    for affected in record.get("affected") or []:
        package = affected.get("package") or {}
        if package.get("ecosystem") != "PyPI" or canonicalize_name(package.get("name", "")) != name:
            continue
        if version in (affected.get("versions") or []):
            return True
        for span in affected.get("ranges") or []:
            if span.get("type") == "ECOSYSTEM" and _in_range(parsed, span.get("events") or []):
                return True
    return False


def serve(directory: Path) -> None:
    records = load(directory)
    if not records:
        print(f"no PyPI OSV records under {directory}", file=sys.stderr)
        sys.exit(3)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            length = int(self.headers.get("Content-Length") or 0)
            try:
                query = json.loads(self.rfile.read(length))
                name = canonicalize_name(query["package"]["name"])
                version = str(query["version"])
            except (ValueError, KeyError, TypeError):
                self.send_error(400)
                return
            found = [r for r in records.get(name, []) if affects(r, name, version)]
            body = json.dumps({"vulns": found} if found else {}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"port {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    serve(Path(sys.argv[1]))
