"""kNN galleries. SQLite is the source of truth (items, labels, metadata, vectors); FAISS is an index derived
from it, kept in memory, written to disk now and then, and rebuilt whenever it is missing, stale or corrupt.

Durability: an insert is acknowledged only after its SQLite transaction commits with `synchronous=FULL` in WAL
mode, so a SIGKILL (or power loss) after the answer cannot lose it. Each gallery has a `version` bumped in the
same transaction as every write; an index file records the version it reflects, so a stale one is detected.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from service.errors import BadRequest, Conflict, NotFound
from zoo.atomic import atomic_write

log = logging.getLogger("service.gallery")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS galleries (
    name TEXT PRIMARY KEY, dim INTEGER NOT NULL, model TEXT NOT NULL, model_name TEXT,
    version INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL, meta TEXT NOT NULL DEFAULT '{}');
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT, gallery TEXT NOT NULL, label TEXT, metadata TEXT,
    vector BLOB NOT NULL, thumbnail BLOB, created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS items_by_gallery ON items(gallery, id);
"""


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise BadRequest(f"gallery name {name!r} is not valid: use 1-64 letters, digits, '_', '-' or '.', "
                         "starting with a letter or digit")
    return name


def normalize(vectors: np.ndarray) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.maximum(norms, 1e-12)


@dataclass
class _Index:
    index: faiss.Index
    version: int
    kind: str
    removed: int = 0  # rows deleted from SQLite but still in an index that cannot remove (HNSW)
    dirty: bool = False


class GalleryStore:
    """All galleries of one service, under `data_dir` (galleries.sqlite + indexes/NAME.faiss)."""

    def __init__(self, data_dir: Path, index_threshold: int = 100_000, index_large: str = "hnsw"):
        self.data_dir = Path(data_dir)
        self.index_dir = self.data_dir / "indexes"
        self.index_dir.mkdir(parents=True, exist_ok=True)
        self.index_threshold = index_threshold
        self.index_large = index_large
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.data_dir / "galleries.sqlite", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a commit is on disk before we acknowledge it
        self._db.executescript(_SCHEMA)
        self._indexes: dict[str, _Index] = {}

    def close(self) -> None:
        with self._lock:
            self.save_indexes()
            self._db.close()

    # queries --------------------------------------------------------------------------------------------
    def _row(self, name: str) -> sqlite3.Row | tuple | None:
        return self._db.execute("SELECT name, dim, model, model_name, version, created, meta FROM galleries "
                                "WHERE name = ?", (name,)).fetchone()

    def get(self, name: str) -> dict[str, Any]:
        """A gallery's description; NotFound when there is none of that name."""
        with self._lock:
            row = self._row(check_name(name))
            if row is None:
                raise NotFound(f"no gallery named {name!r}; GET /galleries lists them, and POST "
                               f"/galleries/{name}/items creates it")
            count, labels = self._db.execute(
                "SELECT COUNT(*), COUNT(DISTINCT label) FROM items WHERE gallery = ?", (name,)).fetchone()
            loaded = self._indexes.get(name)
            return {"name": row[0], "dim": row[1], "model": row[3], "model_sha256": row[2], "count": count,
                    "labels": labels, "version": row[4], "created": row[5], "meta": json.loads(row[6]),
                    "index": loaded.kind if loaded else self._kind_for(count)}

    def names(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT name FROM galleries ORDER BY name")]

    def list(self) -> list[dict[str, Any]]:
        return [self.get(n) for n in self.names()]

    def thumbnail(self, name: str, item_id: int) -> bytes | None:
        with self._lock:
            row = self._db.execute("SELECT thumbnail FROM items WHERE gallery = ? AND id = ?",
                                   (check_name(name), item_id)).fetchone()
        if row is None:
            raise NotFound(f"gallery {name!r} has no item {item_id}")
        return row[0]

    # writes ---------------------------------------------------------------------------------------------
    def add(self, name: str, vectors: np.ndarray, model: str, model_name: str, labels: list[str | None],
            metadata: list[dict | None], thumbnails: list[bytes | None] | None = None,
            check_model: bool = True, meta: dict | None = None) -> list[int]:
        """Insert items in one transaction (creating the gallery if needed); returns their ids once durable."""
        check_name(name)
        vectors = normalize(vectors)
        n, dim = vectors.shape
        thumbnails = thumbnails or [None] * n
        if not (len(labels) == len(metadata) == len(thumbnails) == n):
            raise BadRequest(f"{n} items but {len(labels)} labels and {len(metadata)} metadata entries")
        now = time.time()
        with self._lock:
            row = self._row(name)
            if row is not None:
                if row[1] != dim:
                    raise BadRequest(f"gallery {name!r} holds {row[1]}-dimensional vectors, not {dim}")
                if check_model and row[2] != model:
                    raise Conflict(f"gallery {name!r} was filled by model {row[3]!r} (another model than the one "
                                   "served now); its vectors are not comparable. Use a new gallery name")
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if row is None:
                    self._db.execute("INSERT INTO galleries (name, dim, model, model_name, version, created, meta) "
                                     "VALUES (?, ?, ?, ?, 0, ?, ?)",
                                     (name, dim, model, model_name, now, json.dumps(meta or {})))
                ids = []
                for k in range(n):
                    cur = self._db.execute(
                        "INSERT INTO items (gallery, label, metadata, vector, thumbnail, created) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        (name, labels[k], json.dumps(metadata[k]) if metadata[k] is not None else None,
                         vectors[k].tobytes(), thumbnails[k], now))
                    ids.append(int(cur.lastrowid))
                old = row[4] if row is not None else 0
                self._db.execute("UPDATE galleries SET version = ? WHERE name = ?", (old + 1, name))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            idx = self._indexes.get(name)
            if idx is not None and idx.version == old and idx.kind == self._kind_for(self._count(name)):
                idx.index.add_with_ids(vectors, np.asarray(ids, dtype=np.int64))
                idx.version, idx.dirty = old + 1, True
            else:
                self._indexes.pop(name, None)  # rebuilt at the next search
            return ids

    def delete_item(self, name: str, item_id: int) -> None:
        with self._lock:
            version = self._version(name)
            self._db.execute("BEGIN IMMEDIATE")
            cur = self._db.execute("DELETE FROM items WHERE gallery = ? AND id = ?", (name, item_id))
            if cur.rowcount == 0:
                self._db.execute("ROLLBACK")
                raise NotFound(f"gallery {name!r} has no item {item_id}")
            self._db.execute("UPDATE galleries SET version = ? WHERE name = ?", (version + 1, name))
            self._db.execute("COMMIT")
            idx = self._indexes.get(name)
            if idx is not None and idx.version == version:
                if idx.kind == "hnsw":
                    idx.removed += 1  # HNSW cannot remove: results are filtered against SQLite
                else:
                    idx.index.remove_ids(np.asarray([item_id], dtype=np.int64))
                idx.version, idx.dirty = version + 1, True
            else:
                self._indexes.pop(name, None)

    def delete_gallery(self, name: str) -> None:
        with self._lock:
            self._version(name)
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM items WHERE gallery = ?", (name,))
            self._db.execute("DELETE FROM galleries WHERE name = ?", (name,))
            self._db.execute("COMMIT")
            self._indexes.pop(name, None)
            (self.index_dir / f"{name}.faiss").unlink(missing_ok=True)

    def _version(self, name: str) -> int:
        row = self._row(check_name(name))
        if row is None:
            raise NotFound(f"no gallery named {name!r}; GET /galleries lists them")
        return int(row[4])

    def _count(self, name: str) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM items WHERE gallery = ?", (name,)).fetchone()[0])

    # search -----------------------------------------------------------------------------------------------
    def search(self, name: str, queries: np.ndarray, k: int) -> list[list[dict[str, Any]]]:
        """The `k` nearest items (cosine similarity, best first) of each query vector."""
        with self._lock:
            row = self._row(check_name(name))
            if row is None:
                raise NotFound(f"no gallery named {name!r}; GET /galleries lists them")
            if queries.shape[1] != row[1]:
                raise BadRequest(f"the query has {queries.shape[1]} dimensions but gallery {name!r} holds "
                                 f"{row[1]}-dimensional vectors")
            idx = self._ensure_index(name, int(row[4]))
            fetch = min(k + idx.removed, max(idx.index.ntotal, 1))
            if idx.kind == "hnsw":
                faiss.downcast_index(idx.index.index).hnsw.efSearch = max(64, 2 * fetch)
            scores, ids = idx.index.search(normalize(queries), fetch)
            results = []
            for srow, irow in zip(scores, ids):
                found = [int(i) for i in irow if i >= 0]
                rows = {}
                for start in range(0, len(found), 500):
                    part = found[start:start + 500]
                    q = f"SELECT id, label, metadata FROM items WHERE gallery = ? AND id IN ({','.join('?' * len(part))})"
                    rows.update({r[0]: r for r in self._db.execute(q, (name, *part))})
                hits = []
                for s, i in zip(srow, irow):
                    if i >= 0 and int(i) in rows:
                        r = rows[int(i)]
                        hits.append({"id": int(i), "score": float(s), "label": r[1],
                                     "metadata": json.loads(r[2]) if r[2] else None})
                results.append(hits[:k])
            return results

    def gallery_model(self, name: str) -> str:
        with self._lock:
            row = self._row(check_name(name))
            if row is None:
                raise NotFound(f"no gallery named {name!r}; GET /galleries lists them")
            return row[2]

    # the derived index --------------------------------------------------------------------------------------
    def _kind_for(self, count: int) -> str:
        return "flat" if count < self.index_threshold else self.index_large

    def _ensure_index(self, name: str, version: int) -> _Index:
        idx = self._indexes.get(name)
        if idx is not None and idx.version == version and idx.removed <= 0.1 * max(idx.index.ntotal, 1):
            return idx
        idx = self._load_index_file(name, version) if idx is None else None
        if idx is None:
            idx = self._build_index(name, version)
        self._indexes[name] = idx
        return idx

    def _index_path(self, name: str) -> Path:
        return self.index_dir / f"{name}.faiss"

    def _load_index_file(self, name: str, version: int) -> _Index | None:
        path = self._index_path(name)
        if not path.is_file():
            return None
        try:
            raw = path.read_bytes()
            head, _, body = raw.partition(b"\n")
            header = json.loads(head)
            if header.get("version") != version or header.get("count") != self._count(name):
                log.info("index of gallery %r is stale (version %s, gallery at %s): rebuilding",
                         name, header.get("version"), version)
                return None
            index = faiss.deserialize_index(np.frombuffer(body, dtype=np.uint8))
            if index.ntotal != header["count"] + header.get("removed", 0):
                raise ValueError("row count differs from its header")
        except Exception as e:  # any damage means: rebuild from SQLite, which is the truth
            log.warning("index file %s is unreadable (%s): rebuilding it from SQLite", path, e)
            return None
        return _Index(index, version, header["kind"], removed=header.get("removed", 0))

    def _build_index(self, name: str, version: int) -> _Index:
        start = time.perf_counter()
        dim = int(self._row(name)[1])
        rows = self._db.execute("SELECT id, vector FROM items WHERE gallery = ? ORDER BY id", (name,)).fetchall()
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), dim)
        kind = self._kind_for(len(rows))
        if kind == "flat":
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        elif kind == "hnsw":
            index = faiss.IndexIDMap2(faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT))
        else:
            nlist = max(1, int(4 * math.sqrt(len(rows))))
            m = max(d for d in range(1, min(64, dim) + 1) if dim % d == 0 and dim // d >= 2)
            quantizer = faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFPQ(quantizer, dim, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
            sample = vectors[np.random.default_rng(0).permutation(len(vectors))[: 256 * nlist]]
            index.train(sample)
            index.nprobe = min(nlist, 16)
        if len(rows):
            index.add_with_ids(vectors, ids)
        log.info("built %s index of gallery %r: %d items in %.2f s", kind, name, len(rows),
                 time.perf_counter() - start)
        return _Index(index, version, kind, dirty=True)

    def save_indexes(self) -> None:
        """Write every changed index atomically (header line with version, then FAISS bytes)."""
        with self._lock:
            for name, idx in list(self._indexes.items()):
                if not idx.dirty:
                    continue
                header = {"version": idx.version, "kind": idx.kind, "removed": idx.removed,
                          "count": idx.index.ntotal - idx.removed}
                body = faiss.serialize_index(idx.index).tobytes()
                atomic_write(self._index_path(name),
                             lambda p, h=header, b=body: p.write_bytes(json.dumps(h).encode() + b"\n" + b))
                idx.dirty = False

    def ensure_all_indexes(self) -> None:
        """Load or rebuild every gallery's index (at start-up), and write the rebuilt ones."""
        for name in self.names():
            with self._lock:
                row = self._row(name)
                if row is not None:
                    self._ensure_index(name, int(row[4]))
        self.save_indexes()
