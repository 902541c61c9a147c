"""What only the server backend has: connection errors, the state collection, the factory."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import pytest
from qdrant_client import QdrantClient
from qdrant_client import models as qm

from coderag.errors import ConfigError, IndexError_
from coderag.index import EdgeIndex, ServerIndex, open_index
from coderag.index.server import state_point_id
from coderag.settings import Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_connection_refused_is_an_index_error() -> None:
    idx = ServerIndex(url=f"http://127.0.0.1:{free_port()}")  # nothing listens there
    with pytest.raises(IndexError_, match="qdrant: ensure"):
        idx.ensure(8)
    with pytest.raises(IndexError_):
        idx.get_state("k")
    idx.close()


def test_needs_a_url_or_a_client() -> None:
    with pytest.raises(ConfigError):
        ServerIndex()


def test_local_mode_is_detected() -> None:
    client = QdrantClient(":memory:")
    assert ServerIndex(client=client).local_mode
    assert not ServerIndex(url="http://127.0.0.1:6333").local_mode
    client.close()


def test_close_leaves_a_callers_client_open() -> None:
    client = QdrantClient(":memory:")
    idx = ServerIndex(client=client, collection="c")
    idx.ensure(8)
    idx.close()
    assert client.collection_exists("c")  # still usable
    with pytest.raises(IndexError_, match="closed"):
        idx.count()
    client.close()


def test_state_lives_in_its_own_collection() -> None:
    client = QdrantClient(":memory:")
    idx = ServerIndex(client=client, collection="code")
    idx.ensure(8)
    idx.set_state("commit:g/app:main", {"commit": "abc"})
    rec = client.retrieve("code_state", [state_point_id("commit:g/app:main")])
    assert rec[0].payload == {"key": "commit:g/app:main", "value": {"commit": "abc"}}
    assert str(uuid.UUID(state_point_id("x"))) == state_point_id("x")
    assert client.count("code").count == 0
    client.close()


def test_state_works_before_ensure() -> None:
    client = QdrantClient(":memory:")
    idx = ServerIndex(client=client)
    idx.set_state("k", {"v": 1})
    assert idx.get_state("k") == {"v": 1}
    client.close()


def test_foreign_collection_is_refused() -> None:
    client = QdrantClient(":memory:")
    client.create_collection(
        "code", vectors_config=qm.VectorParams(size=8, distance=qm.Distance.COSINE)
    )
    with pytest.raises(ConfigError, match="named 'dense'"):
        ServerIndex(client=client, collection="code").ensure(8)
    client.close()


def test_factory_picks_the_backend(tmp_path: Path) -> None:
    edge = open_index(Settings(data_dir=tmp_path, index_backend="edge", collection="x"))
    assert isinstance(edge, EdgeIndex)
    assert edge.path == tmp_path / "index" and edge.collection == "x"
    server = open_index(
        Settings(data_dir=tmp_path, qdrant_url="http://127.0.0.1:6333", collection="y")
    )
    assert isinstance(server, ServerIndex)
    assert server.collection == "y"
    assert not (tmp_path / "index").exists()  # nothing opened yet
    server.close()
