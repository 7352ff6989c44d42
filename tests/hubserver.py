"""A local stand-in for the Hugging Face Hub's HTTP layout (datasets only), on 127.0.0.1, for tests.

It answers what `datasets` and `huggingface_hub` ask of the hub when loading a dataset stored as data
files: a revision's info (``/api/datasets/ID/revision/REV``: its commit sha and files), the tree of a
revision (``/api/datasets/ID/tree/REV/PATH``), paths-info, and the files themselves
(``/datasets/ID/resolve/REV/PATH``, HEAD and GET, with ``X-Repo-Commit`` and an ``ETag``). A revision is
a folder ``ROOT/ID/REV`` (``/`` in a revision as ``%2F``: ``refs%2Fconvert%2Fparquet``); its commit sha
is a hash of the id and revision, and a request by sha is answered from the same folder.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

PARQUET = "refs/convert/parquet"


class FakeHub:
    """Datasets laid out as the hub lays them out, served until ``close``."""

    def __init__(self, root: Path):
        self.root = root
        self.requests: list[str] = []
        self._by_sha: dict[tuple[str, str], str] = {}
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # ---- laying out datasets ----

    def folder(self, repo: str, revision: str) -> Path:
        d = self.root / repo / revision.replace("/", "%2F")
        d.mkdir(parents=True, exist_ok=True)
        return d

    def add_file(self, repo: str, revision: str, path: str, data: bytes | str) -> None:
        f = self.folder(repo, revision) / path
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(data.encode() if isinstance(data, str) else data)

    def add_split(self, repo: str, revision: str, config: str | None, split: str, rows: list[dict]) -> None:
        """One split as Parquet where the hub keeps it: the Parquet conversion's ``CONFIG/SPLIT/0000.parquet``,
        else ``CONFIG/SPLIT-00000-of-00001.parquet`` named by the dataset card's configs (``data/`` without one)."""
        import io

        import pyarrow as pa
        import pyarrow.parquet as pq

        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows), buf)
        if revision == PARQUET:
            self.add_file(repo, revision, f"{config or 'default'}/{split}/0000.parquet", buf.getvalue())
            return
        self.add_file(repo, revision, f"{config or 'data'}/{split}-00000-of-00001.parquet", buf.getvalue())
        if config:
            self._card(repo, revision)

    def _card(self, repo: str, revision: str) -> None:
        d = self.folder(repo, revision)
        lines = ["---", "configs:"]
        for cfg in sorted(p.name for p in d.iterdir() if p.is_dir()):
            lines += [f"- config_name: {cfg}", "  data_files:"]
            for f in sorted((d / cfg).glob("*.parquet")):
                split = f.name.split("-00000-")[0]
                lines += [f"  - split: {split}", f"    path: {cfg}/{split}-*"]
        (d / "README.md").write_text("\n".join([*lines, "---", ""]))

    # ---- answering ----

    def sha(self, repo: str, revision: str) -> str:
        revision = self._by_sha.get((repo, revision), revision)
        h = hashlib.sha1(f"{repo}@{revision}".encode()).hexdigest()
        self._by_sha[(repo, h)] = revision
        return h

    def revision_dir(self, repo: str, revision: str) -> Path | None:
        revision = self._by_sha.get((repo, revision), revision)
        d = self.root / repo / revision.replace("/", "%2F")
        return d if d.is_dir() else None

    def split_revision(self, repo: str, parts: list[str]) -> tuple[str | None, str]:
        """(revision, path) of URL parts holding both: a revision may hold '/' (refs/convert/parquet)."""
        for n in (3, 1):
            rev = "/".join(parts[:n])
            if len(parts) >= n and self.revision_dir(repo, rev):
                return rev, "/".join(parts[n:])
        return None, ""


def _entry(base: Path, p: Path) -> dict:
    if p.is_dir():
        return {"type": "directory", "path": p.relative_to(base).as_posix(), "oid": "0" * 40}
    data = p.read_bytes()
    return {"type": "file", "path": p.relative_to(base).as_posix(), "size": len(data), "oid": _oid(data)}


def _oid(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def _handler(hub: FakeHub):
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet: the test's output is the test's
            pass

        def _send(self, code: int, body: bytes = b"", headers: dict | None = None) -> None:
            self.send_response(code)
            for k, v in {"Content-Length": str(len(body)), **(headers or {})}.items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, obj: object) -> None:
            self._send(200, json.dumps(obj).encode(), {"Content-Type": "application/json"})

        def _missing(self, code: str = "EntryNotFound") -> None:
            self._send(404, b"", {"X-Error-Code": code})

        def handle_any(self) -> None:
            url = urlsplit(self.path)
            rng = self.headers.get("Range")
            hub.requests.append(f"{self.command} {self.path}" + (f" Range: {rng}" if rng else ""))
            parts = unquote(url.path).strip("/").split("/")
            if parts[:2] == ["api", "datasets"] and len(parts) >= 4:
                return self._api("/".join(parts[2:4]), parts[4:], parse_qs(url.query))
            if parts[0] == "datasets" and "resolve" in parts:
                i = parts.index("resolve")
                return self._resolve("/".join(parts[1:i]), parts[i + 1 :])
            return self._missing("RepoNotFound")

        do_GET = do_HEAD = do_POST = handle_any

        def _resolve(self, repo: str, rest: list[str]) -> None:
            rev, path = hub.split_revision(repo, rest)
            if rev is None:
                return self._missing("RevisionNotFound")
            f = hub.revision_dir(repo, rev) / path
            if not f.is_file():
                return self._missing()
            data = f.read_bytes()
            headers = {"ETag": f'"{_oid(data)}"', "X-Repo-Commit": hub.sha(repo, rev), "Accept-Ranges": "bytes"}
            rng = self.headers.get("Range", "")
            if rng.startswith("bytes="):
                start, _, end = rng[6:].partition("-")
                if start:
                    lo, hi = int(start), int(end) if end else len(data) - 1
                else:  # the last N bytes (a Parquet footer)
                    lo, hi = len(data) - int(end), len(data) - 1
                headers["Content-Range"] = f"bytes {lo}-{hi}/{len(data)}"
                return self._send(206, data[lo : hi + 1], headers)
            return self._send(200, data, headers)

        def _api(self, repo: str, rest: list[str], query: dict) -> None:
            if not rest or rest[0] == "revision":
                rev = "/".join(rest[1:]) or "main"
                d = hub.revision_dir(repo, rev)
                if d is None:
                    return self._missing("RevisionNotFound" if (hub.root / repo).is_dir() else "RepoNotFound")
                files = sorted(p for p in d.rglob("*") if p.is_file())
                return self._json(
                    {
                        "id": repo,
                        "sha": hub.sha(repo, rev),
                        "private": False,
                        "gated": False,
                        "disabled": False,
                        "siblings": [{"rfilename": p.relative_to(d).as_posix()} for p in files],
                        "cardData": {},
                        "tags": [],
                    }
                )
            if rest[0] == "tree":
                rev, sub = hub.split_revision(repo, rest[1:])
                if rev is None:
                    return self._missing("RevisionNotFound")
                d = hub.revision_dir(repo, rev)
                base = d / sub if sub else d
                if not base.is_dir():
                    return self._missing()
                deep = query.get("recursive", ["false"])[0].lower() in ("1", "true")
                return self._json([_entry(d, p) for p in sorted(base.rglob("*") if deep else base.iterdir())])
            if rest[0] == "paths-info":
                d = hub.revision_dir(repo, "/".join(rest[1:]))
                if d is None:
                    return self._missing("RevisionNotFound")
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                try:
                    paths = json.loads(body).get("paths", [])
                except ValueError:
                    paths = parse_qs(body).get("paths", [])
                return self._json([_entry(d, d / p) for p in paths if (d / p).exists()])
            return self._missing("RepoNotFound")

    return Handler
