"""Shard folders over HTTP (a real nginx) and S3 (moto's S3 stand-in): the same bytes as the local folder,
retries on dropped connections, one-line errors, verify, and upload with resume.

Servers come from tests/conftest.py (nginx, moto_s3, s3_env); the shard folder is sklearn's real digits
(digits_shards: 5 train + 2 val shards). Retries back off 1 ms here (0.2 s by default) to keep this fast.
"""

from __future__ import annotations

import shutil
import sys
import uuid
from pathlib import Path

import pytest

from convnets.data_pipelines.shards.format import ShardError
from convnets.data_pipelines.storage.store import LocalStore, ObjectMissing, StoreError, open_store

pytestmark = pytest.mark.integration


def _files(root: Path) -> dict[str, bytes]:
    """Every file a reader needs (the writer's .done resume records stay in the staging folder)."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix != ".done"
    }


@pytest.fixture(scope="session")
def served_digits(digits_shards, nginx_root) -> str:
    """The digits shard folder copied under nginx's root; its name under it."""
    shutil.copytree(digits_shards, nginx_root / "digits")
    return "digits"


@pytest.fixture
def s3_digits(s3_env, digits_shards) -> str:
    """The digits shard folder put into a fresh bucket with boto3 (not the code under test); its URL."""
    bucket = f"shards-{uuid.uuid4().hex[:8]}"
    s3_env.create_bucket(bucket)
    s3_env.put_folder(digits_shards, bucket, "digits")
    return f"s3://{bucket}/digits"


@pytest.fixture(params=["http", "s3"])
def remote_digits(request, nginx, served_digits) -> str:
    if request.param == "http":
        return f"{nginx.url}/{served_digits}"
    return request.getfixturevalue("s3_digits")


def test_remote_store_reads_what_the_local_folder_holds(remote_digits, digits_shards):
    local, remote = LocalStore(digits_shards / "train"), open_store(f"{remote_digits}/train")
    names = [p.name for p in sorted((digits_shards / "train").iterdir()) if p.suffix != ".done"]
    assert len(names) >= 10  # 5 shards, 5 .idx, labels.npy, manifest.json
    for name in names:
        want = local.read(name)
        assert remote.size(name) == len(want) and remote.exists(name)
        assert remote.read(name) == want
        assert b"".join(remote.stream(name, chunk_bytes=4096)) == want
        for start, length in [(0, 1), (512, 110), (len(want) - 7, 7)]:
            assert remote.read_range(name, start, length) == want[start : start + length]
    assert not remote.exists("shard-999999.tar")
    with pytest.raises(ObjectMissing) as missing:
        remote.read("shard-999999.tar")
    message = str(missing.value)
    assert message == f"{remote_digits}/train/shard-999999.tar: no such object"
    with pytest.raises(StoreError, match="wanted 10|range read"):
        remote.read_range(names[0], remote.size(names[0]) - 5, 10)


def _big_file(nginx_root: Path) -> tuple[str, bytes]:
    path = nginx_root / "big.bin"
    if not path.exists():
        path.write_bytes(bytes(range(256)) * 12_000 + b"end")  # 3 MB with a tail that a short read would lose
    return path.name, path.read_bytes()


def test_a_dropped_connection_is_resumed_and_the_bytes_are_exact(nginx, nginx_root):
    from tests.servers import DroppingProxy

    name, want = _big_file(nginx_root)
    proxy = DroppingProxy(nginx.port, cut_after=700_000, cuts=2)
    try:
        store = open_store(proxy.url)
        store.backoff_s = 0.001
        got = b"".join(store.stream(name, chunk_bytes=64 << 10))
        assert proxy.dropped == 2, "the proxy never cut a connection: the test did not test a resume"
        assert got == want
    finally:
        proxy.stop()


def test_a_connection_dropped_every_time_gives_one_line_naming_the_object(nginx, nginx_root):
    from tests.servers import DroppingProxy

    name, want = _big_file(nginx_root)
    proxy = DroppingProxy(nginx.port, cut_after=100_000, cuts=None)  # 3 MB would take 30 resumed pieces
    try:
        store = open_store(proxy.url)
        store.backoff_s = 0.001
        received = []
        with pytest.raises(StoreError) as failed:
            for chunk in store.stream(name, chunk_bytes=64 << 10):
                received.append(chunk)
        message = str(failed.value)
        assert "\n" not in message and message.startswith(f"{proxy.url}/{name}: ")
        assert f"dropped {store.tries} times" in message
        assert proxy.dropped == store.tries
        assert sum(map(len, received)) < len(want)  # what came before the error was never the whole object
    finally:
        proxy.stop()


def test_an_unreachable_endpoint_gives_one_line_without_the_secret(s3_env, monkeypatch):
    from tests.servers import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    store = open_store("s3://nowhere-bucket/prefix")
    store.backoff_s = 0.001
    with pytest.raises(StoreError) as failed:
        store.read("train/manifest.json")
    message = str(failed.value)
    assert "\n" not in message and message.startswith("s3://nowhere-bucket/prefix/train/manifest.json: ")
    assert "failed 5 times" in message
    assert s3_env.env["AWS_SECRET_ACCESS_KEY"] not in message


def test_a_missing_library_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "obstore", None)
    with pytest.raises(StoreError) as failed:
        open_store("s3://bucket/prefix")
    assert str(failed.value) == "s3:// shard folders need obstore: pip install 'convnets[remote]'"


def _publish(kind: str, request, local: Path) -> str:
    """Serve a local folder the way `kind` does (copied under nginx's root, or put into a fresh bucket); its URL."""
    name = f"{local.name}-{uuid.uuid4().hex[:8]}"
    if kind == "http":
        shutil.copytree(local, request.getfixturevalue("nginx_root") / name)
        return f"{request.getfixturevalue('nginx').url}/{name}"
    s3 = request.getfixturevalue("s3_env")
    s3.create_bucket(name)
    s3.put_folder(local, name, "shards")
    return f"s3://{name}/shards"


@pytest.mark.parametrize("kind", ["http", "s3"])
def test_verify_streams_a_remote_folder_and_names_a_corrupted_shard(kind, request, digits_shards, tmp_path):
    from convnets.cli import main
    from convnets.data_pipelines.shards.cli import verify_output

    good = _publish(kind, request, digits_shards)
    reports = verify_output(good)  # the folder of splits: train/ and val/
    local = verify_output(digits_shards)
    assert [(r.num_shards, r.num_samples, r.class_counts) for r in reports] == [
        (r.num_shards, r.num_samples, r.class_counts) for r in local
    ]
    assert [str(r.split_dir) for r in reports] == [f"{good}/train", f"{good}/val"]
    assert main(["shards", "verify", f"{good}/val"]) == 0  # the command line keeps the URL whole

    bad = tmp_path / "bad"
    shutil.copytree(digits_shards, bad)
    shard = bad / "train" / "shard-000001.tar"
    data = bytearray(shard.read_bytes())
    data[-600] ^= 0xFF  # inside the end-of-archive padding: only the sha256 can notice
    shard.write_bytes(bytes(data))
    url = _publish(kind, request, bad)
    with pytest.raises(ShardError) as failed:
        verify_output(url)
    assert str(failed.value).startswith(f"{url}/train/shard-000001.tar: sha256 ")


def _bucket_files(s3, bucket: str, prefix: str) -> dict[str, bytes]:
    """Every object under the prefix, read back with boto3 (not the code under test)."""
    client = s3.client()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/").get("Contents", [])]
    return {k.removeprefix(prefix + "/"): client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in sorted(keys)}


def test_writing_to_s3_uploads_the_same_bytes_as_a_local_write(s3_env, digits_shards, tmp_path):
    from convnets.cli import main

    bucket = f"up-{uuid.uuid4().hex[:8]}"
    s3_env.create_bucket(bucket)
    url = f"s3://{bucket}/digits"
    staging = tmp_path / "staging"
    # The same command as the digits_shards fixture's write (shard size 300, seed 0), to a bucket.
    args = ["shards", "digits", url, "--shard-size", "300", "--workers", "1", "--staging", str(staging)]
    assert main(args) == 0
    assert _bucket_files(s3_env, bucket, "digits") == _files(digits_shards)
    assert main(["shards", "verify", url]) == 0


def test_http_is_read_only_for_writing(capsys):
    from convnets.cli import main

    with pytest.raises(SystemExit):
        main(["shards", "digits", "http://127.0.0.1:9/digits"])
    assert "http(s):// shard folders are read-only" in capsys.readouterr().err


class _FailingUpload:
    """The real S3 store whose k-th upload fails as a give-up after retries would (the object is not written)."""

    def __init__(self, store, *, fail_at: int) -> None:
        self._store, self.fail_at, self.calls = store, fail_at, 0

    def __getattr__(self, name):
        return getattr(self._store, name)

    def upload(self, local, name, *, sha256=None):
        self.calls += 1
        if self.calls == self.fail_at:
            raise StoreError(f"{self._store.url(name)}: upload failed 5 times, giving up (connection reset)")
        self._store.upload(local, name, sha256=sha256)


def test_an_interrupted_upload_resumes_without_sending_anything_twice(s3_env, digits_shards, tmp_path):
    from convnets.data_pipelines.shards.sources import DigitsSource
    from convnets.data_pipelines.shards.upload import UploadSink
    from convnets.data_pipelines.shards.writer import write_shards

    bucket = f"resume-{uuid.uuid4().hex[:8]}"
    s3_env.create_bucket(bucket)
    store, staging = open_store(f"s3://{bucket}/digits"), tmp_path / "staging"
    first = UploadSink(_FailingUpload(store, fail_at=5), staging)  # train: tar, idx, tar, idx, then the 3rd tar
    with pytest.raises(StoreError, match="shard-000002.tar: upload failed"):
        write_shards(DigitsSource(), staging, shard_size=300, seed=0, sink=first)
    assert first.uploaded == [f"train/shard-00000{i}.{ext}" for i in (0, 1) for ext in ("tar", "idx")]
    remote = _bucket_files(s3_env, bucket, "digits")
    assert "train/manifest.json" not in remote and "train/shard-000002.tar" not in remote

    again = UploadSink(store, staging)
    write_shards(DigitsSource(), staging, shard_size=300, seed=0, sink=again)
    assert again.skipped == first.uploaded  # nothing sent twice
    assert again.uploaded[0] == "train/shard-000002.tar"  # the interrupted shard is sent first
    for split in ("train", "val"):
        sent = [name for name in again.uploaded if name.startswith(f"{split}/")]
        assert sent[-1] == f"{split}/manifest.json"  # the manifest last
    assert _bucket_files(s3_env, bucket, "digits") == _files(digits_shards)


def test_s3_credentials_come_from_a_shared_credentials_file(s3_env, s3_digits, digits_shards, monkeypatch, tmp_path):
    """~/.aws/credentials (here through AWS_SHARED_CREDENTIALS_FILE) works: obstore alone would skip it and ask
    the instance metadata endpoint, which answers nothing here."""
    credentials = tmp_path / "credentials"
    credentials.write_text("[default]\naws_access_key_id = from-file\naws_secret_access_key = from-file-secret\n")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_METADATA_ENDPOINT", "http://127.0.0.1:9")  # no instance role to fall back on
    assert open_store(f"{s3_digits}/val").read("manifest.json") == (digits_shards / "val/manifest.json").read_bytes()

    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "absent"))  # no credentials anywhere
    store = open_store(f"{s3_digits}/val")
    store.backoff_s = 0.001
    with pytest.raises(StoreError, match=f"^{s3_digits}/val/manifest.json: "):
        store.read("manifest.json")


@pytest.mark.slow
def test_a_killed_upload_resumes_where_it_stopped(s3_env, tmp_path):
    """SIGKILL the real command mid-upload, then run the same write again: nothing already in the bucket is
    sent again, the manifest appears only at the end, and the bucket holds what a local write holds."""
    import os
    import signal
    import subprocess
    import time

    from convnets.data_pipelines.shards.sources import DigitsSource
    from convnets.data_pipelines.shards.upload import UploadSink
    from convnets.data_pipelines.shards.writer import write_shards

    bucket = f"kill-{uuid.uuid4().hex[:8]}"
    s3_env.create_bucket(bucket)
    url, staging = f"s3://{bucket}/digits", tmp_path / "staging"
    command = ["shards", "digits", url, "--shard-size", "20", "--workers", "1", "--staging", str(staging)]
    child = subprocess.Popen([sys.executable, "-m", "convnets.cli", *command], env={**os.environ}, text=True)
    client, deadline = s3_env.client(), time.monotonic() + 120
    try:
        while time.monotonic() < deadline and child.poll() is None:  # 72 train shards: kill after 10 are there
            listed = client.list_objects_v2(Bucket=bucket, Prefix="digits/train/").get("Contents", [])
            if sum(o["Key"].endswith(".tar") for o in listed) >= 10:
                break
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL, "the write finished before it was killed: nothing was resumed"
    before = _bucket_files(s3_env, bucket, "digits")
    assert "train/manifest.json" not in before and len(before) >= 10

    again = UploadSink(open_store(url), staging)
    write_shards(DigitsSource(), staging, shard_size=20, seed=0, sink=again)
    assert sorted(again.skipped) == sorted(before)  # everything already there is kept, nothing sent twice
    assert not set(again.uploaded) & set(before)
    assert [name for name in again.uploaded if name.startswith("val/")][-1] == "val/manifest.json"
    reference = tmp_path / "local"
    write_shards(DigitsSource(), reference, shard_size=20, seed=0)
    assert _bucket_files(s3_env, bucket, "digits") == _files(reference)


def test_a_forked_child_gets_one_line_instead_of_a_hang(nginx, served_digits):
    """obstore's runtime does not survive fork(): without the check, the child below hangs or segfaults."""
    import os
    import time

    url = f"{nginx.url}/{served_digits}/val"
    assert open_store(url).size("manifest.json") > 0  # the parent starts the runtime
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what open_store(...).read gives, then leave without cleanup
        os.close(read_end)
        try:
            open_store(url).read("manifest.json")
            os.write(write_end, b"read")
        except StoreError as exc:
            os.write(write_end, str(exc).encode())
        os._exit(0)
    os.close(write_end)
    deadline = time.monotonic() + 20
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung")
        time.sleep(0.05)
    with os.fdopen(read_end, "rb") as report:
        message = report.read().decode()
    assert message.startswith(f"{url}/manifest.json: remote shard folders cannot be read in a process forked")
