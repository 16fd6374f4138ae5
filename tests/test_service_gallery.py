"""service.gallery: SQLite is the truth, the FAISS index is derived, persisted and rebuilt when it lies."""

import numpy as np
import pytest

from service.errors import BadRequest, Conflict, NotFound
from service.gallery import GalleryStore


def vectors(n, d=8, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def add(store, name, v, model="m1"):
    return store.add(name, v, model, "model", [str(i % 3) for i in range(len(v))], [{"i": i} for i in range(len(v))])


def test_search_finds_each_item_itself_first(tmp_path):
    store = GalleryStore(tmp_path)
    v = vectors(50)
    ids = add(store, "g", v)
    hits = store.search("g", v[:5], k=3)
    assert [h[0]["id"] for h in hits] == ids[:5]
    assert hits[0][0]["score"] == pytest.approx(1.0, abs=1e-5) and hits[0][0]["metadata"] == {"i": 0}
    assert hits[0][0]["score"] >= hits[0][1]["score"] >= hits[0][2]["score"]


def test_items_and_index_survive_reopening(tmp_path):
    store = GalleryStore(tmp_path)
    v = vectors(20)
    ids = add(store, "g", v)
    store.search("g", v[:1], 1)
    store.close()
    store = GalleryStore(tmp_path)
    assert store.get("g")["count"] == 20
    assert store.search("g", v[7:8], 1)[0][0]["id"] == ids[7]


def test_stale_or_corrupt_index_file_is_rebuilt_from_sqlite(tmp_path):
    store = GalleryStore(tmp_path)
    v = vectors(30)
    add(store, "g", v[:10])
    store.search("g", v[:1], 1)
    store.save_indexes()
    ids = add(store, "g", v[10:])  # index file on disk is now one version behind
    store._db.close()  # a crash: no save
    store = GalleryStore(tmp_path)
    assert store.search("g", v[25:26], 1)[0][0]["id"] == ids[15]
    store.save_indexes()
    path = tmp_path / "indexes" / "g.faiss"
    path.write_bytes(path.read_bytes()[:40])  # damage it
    store = GalleryStore(tmp_path)
    assert store.search("g", v[25:26], 1)[0][0]["id"] == ids[15]


@pytest.mark.parametrize("kind", ["hnsw", "ivfpq"])
def test_large_galleries_use_an_approximate_index_and_deletes_are_honoured(tmp_path, kind):
    store = GalleryStore(tmp_path, index_threshold=100, index_large=kind)
    v = vectors(400, d=16)
    ids = add(store, "g", v)
    assert store.search("g", v[3:4], 1)[0][0]["id"] == ids[3]
    assert store.get("g")["index"] == kind
    store.delete_item("g", ids[3])
    assert ids[3] not in [h["id"] for h in store.search("g", v[3:4], 5)[0]]
    assert store.get("g")["count"] == 399


def test_refusals(tmp_path):
    store = GalleryStore(tmp_path)
    add(store, "g", vectors(3))
    with pytest.raises(NotFound):
        store.search("nope", vectors(1), 1)
    with pytest.raises(BadRequest):
        store.search("g", vectors(1, d=4), 1)
    with pytest.raises(Conflict):
        add(store, "g", vectors(1), model="another")
    with pytest.raises(BadRequest):
        add(store, "bad name!", vectors(1))
    with pytest.raises(NotFound):
        store.delete_item("g", 12345)
