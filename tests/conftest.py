"""Shared fixtures. The bundled model is loaded once per test session (it is the slow part)."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA = Path(__file__).resolve().parent / "data"
"""Small public data the tests read, committed (each folder's README.md: source, licence)."""


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """Export dir for ONNX/OpenVINO models, kept between test runs on this machine.

    Exporting takes 10-30 s per backend on 2 cores, so a fresh dir per session would blow the
    suite's time budget. Safe to share: exports are keyed by model hash and toolchain
    versions, written atomically under a file lock, and re-checked against torch's vectors at
    every load. ``CODERAG_TEST_MODELS_DIR`` overrides it (point it at an empty dir to test a
    cold export).
    """
    env = os.environ.get("CODERAG_TEST_MODELS_DIR")
    path = Path(env) if env else Path(tempfile.gettempdir()) / f"coderag-test-models-{os.getuid()}"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def embedder(model_dir: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The real bundled MiniLM, warmed once, with a session-wide embedding cache."""
    from embeddings import Embedder

    emb = Embedder(cache_dir=tmp_path_factory.mktemp("embcache"), models_dir=model_dir)
    emb.warm_up()
    return emb


@pytest.fixture(scope="session")
def torch_embedder(model_dir: Path):  # type: ignore[no-untyped-def]
    """The bundled MiniLM on plain torch fp32, CPU, no cache: the reference vectors that
    every other backend must reproduce."""
    from embeddings import Embedder

    emb = Embedder(backend="torch", device="cpu", models_dir=model_dir)
    emb.warm_up()
    return emb


def git(cwd: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "Test",
        "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "Test",
        "GIT_COMMITTER_EMAIL": "test@example.com",
    }
    return subprocess.run(
        ["git", "-C", str(cwd), *args], check=True, capture_output=True, text=True, env=env
    ).stdout.strip()


@pytest.fixture
def git_repo(tmp_path: Path) -> Iterator[Path]:
    """An empty git repository on branch main."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    yield repo


# --- API server (tests/test_api*.py, test_continue*.py, test_auth*.py, test_litellm_hook.py) ---


@pytest.fixture(scope="session")
def api_server(tmp_path_factory: pytest.TempPathFactory, embedder, model_dir: Path):  # type: ignore[no-untyped-def]
    """The coderag app served by uvicorn on loopback, over an Edge index of two small repos
    (group/alpha on main and feature/x, group/beta on main), with auth on."""
    import secrets

    from coderag.api import create_app
    from coderag.runtime import build_runtime
    from coderag.settings import Settings
    from tests.api_support import ALPHA, BETA, ApiServer, index_repos, make_repos, running_server

    root = tmp_path_factory.mktemp("api")
    tokens = {
        role: f"{role}-{secrets.token_hex(16)}" for role in ("admin", "alpha", "beta", "none")
    }
    settings = Settings(
        data_dir=root / "data",
        model_export_dir=model_dir,
        index_backend="edge",
        api_tokens={
            tokens["admin"]: ["*"],
            tokens["alpha"]: [ALPHA],
            tokens["beta"]: [BETA],
            tokens["none"]: [],
        },
        log_json=True,
    )
    rt = build_runtime(settings)
    rt.embedder = rt.indexer.embedder = rt.retriever.embedder = embedder
    repos = make_repos(root / "src")
    rt.warm_up()
    index_repos(rt, repos)
    with running_server(create_app(settings, runtime=rt)) as url:
        yield ApiServer(url=url, runtime=rt, tokens=tokens, repos=repos)
    rt.close()
