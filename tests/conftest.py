"""Shared fixtures: where the real shared data lives, and skips when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# CONVNETS_SHARED_DATA points elsewhere on machines without ../shared (the GPU machine gets a subset).
SHARED_DATA = Path(os.environ.get("CONVNETS_SHARED_DATA") or REPO.parent / "shared" / "data")


def pytest_collection_modifyitems(config, items) -> None:
    """Skip, with the reason, what this machine cannot run: GPU tests without CUDA, DALI tests without DALI."""
    import importlib.util

    import torch

    no_gpu = pytest.mark.skip(reason="needs a CUDA GPU (run on the device machine: pytest -m gpu)")
    no_dali = pytest.mark.skip(reason="nvidia-dali does not install on this platform (Linux x86_64 only)")
    # Where DALI installs (Linux x86_64, CI), its absence is a broken install: the tests run and fail.
    run_dali = importlib.util.find_spec("nvidia.dali") is not None or dali_installable()
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_gpu)
        if "dali" in item.keywords and not run_dali:
            item.add_marker(no_dali)


def dali_installable() -> bool:
    """nvidia-dali-cuda130 has wheels for Linux x86_64 only (pyproject's environment marker says the same)."""
    import platform
    import sys

    return sys.platform == "linux" and platform.machine() == "x86_64"


def shared_data(sub: str) -> Path:
    """Path to ../shared/data/<sub>; skips the test (with the reason) when it is missing."""
    path = SHARED_DATA / sub
    if not path.exists():
        pytest.skip(f"real data {path} is absent (only present in the project's workspace and CI)")
    return path


@pytest.fixture(scope="session")
def digits_shards(tmp_path_factory) -> Path:
    """sklearn's real digits written as shards once per test session (about a second)."""
    from convnets.data_pipelines.shards.sources import DigitsSource
    from convnets.data_pipelines.shards.writer import write_shards

    out = tmp_path_factory.mktemp("digits_shards")
    write_shards(DigitsSource(), out, shard_size=300, seed=0)
    return out


@pytest.fixture(scope="session")
def imagenette_small_tree(tmp_path_factory) -> Path:
    """12 real Imagenette JPEGs from each of 3 classes per split, as an ImageFolder tree of links."""
    root = shared_data("imagenette")
    tree = tmp_path_factory.mktemp("imagenette_small")
    for split in ("train", "val"):
        for class_dir in sorted((root / split).iterdir())[:3]:
            (tree / split / class_dir.name).mkdir(parents=True)
            for image in sorted(class_dir.iterdir())[:12]:
                (tree / split / class_dir.name / image.name).symlink_to(image)
    return tree


@pytest.fixture(scope="session")
def imagenette_small_shards(imagenette_small_tree, tmp_path_factory) -> Path:
    """The small tree as shards (read in place)."""
    from convnets.data_pipelines.shards.sources import ImageFolderSource
    from convnets.data_pipelines.shards.writer import write_shards

    tree = imagenette_small_tree
    out = tmp_path_factory.mktemp("imagenette_small_shards")
    write_shards(ImageFolderSource(root=tree), out, shard_size=10, seed=0)
    return out


@pytest.fixture(scope="session")
def nginx_root(tmp_path_factory) -> Path:
    """The folder the session's nginx serves: put a shard folder under it, read it at nginx.url + '/<name>'."""
    return tmp_path_factory.mktemp("nginx_root")


@pytest.fixture(scope="session")
def nginx(nginx_root):
    """Debian's nginx serving nginx_root on a free localhost port (byte ranges on); skipped without nginx."""
    from tests.servers import Nginx, nginx_binary

    if nginx_binary() is None:
        pytest.skip("nginx is not installed and installing it needs root (sudo apt-get install nginx-light)")
    server = Nginx(nginx_root)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def moto_s3():
    """moto's S3 stand-in (no real S3 exists on a test machine); use it through the s3_env fixture."""
    import importlib.util

    from tests.servers import MotoS3

    if importlib.util.find_spec("moto") is None:
        pytest.skip("moto is not installed: pip install -e '.[dev]' (moto[server] is a dev dependency)")
    server = MotoS3()
    yield server
    server.stop()


@pytest.fixture
def s3_env(moto_s3, monkeypatch):
    """The stand-in's endpoint and fake credentials in this test's environment only; returns the server."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    for name, value in moto_s3.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")  # a developer's ~/.aws must not leak into the tests
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    return moto_s3
