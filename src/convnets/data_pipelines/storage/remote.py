"""Shard folders over HTTP(S), S3 and GCS, through obstore (Rust's object_store; one wheel, no deps).

Why obstore: on this workload (whole ~100 MB shards, 110 kB ranges, small manifests) it matched or beat
fsspec+s3fs/aiohttp on localhost nginx and the moto S3 stand-in (results/store-libraries/), it is one
~10 MB wheel instead of aiobotocore+botocore+aiohttp, and it has no event loop to manage per process.

Retries are ours, not the library's (its own are switched off): every request, and every resumed
piece of a stream, gets `tries` attempts with exponential backoff (0.2 s, 0.4 s, ... capped at 5 s) on
transient errors (connection refused or dropped, timeouts, 5xx); then ONE StoreError line naming the
object and its URL. A stream that ends short (connection cut mid-shard) resumes with a Range request
pinned to the object's ETag, so the bytes are never spliced from two versions of the object.

Credentials: S3 through boto3's provider chain when boto3 is installed (environment, ~/.aws/credentials
and config profiles, SSO, container and instance roles); else obstore's own (environment, web identity,
container and instance roles: it does not read ~/.aws). GCS through obstore's (GOOGLE_APPLICATION_
CREDENTIALS, gcloud's application-default file, the metadata server). They are never logged or written,
and error messages carry only the object's URL and the library's first line with any secret removed.

Fork: obstore's runtime (tokio threads) does not survive fork(); once this process has made a request, a
forked child that makes one hangs or crashes, even through a store it opens itself. The child gets one
StoreError line instead; read remote folders in the parent's threads or in spawned processes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from convnets.data_pipelines.storage.errors import ObjectMissing, StoreError

T = TypeVar("T")

DEFAULT_TRIES = 5
_SECRET_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "GOOGLE_SERVICE_ACCOUNT_KEY")


def _obstore(scheme: str):
    try:
        import obstore
    except ImportError:
        raise StoreError(f"{scheme}:// shard folders need obstore: pip install 'convnets[remote]'") from None
    return obstore


def _reason(exc: BaseException) -> str:
    """The library's first line, without secrets (a signing error may echo a header) and at most 200 chars."""
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    for var in _SECRET_VARS:
        secret = os.environ.get(var)
        if secret and len(secret) >= 8:
            text = text.replace(secret, "***")
    return text[:200]


_STARTED_IN: int | None = None  # the process whose obstore runtime (tokio threads) has started


def _check_not_forked(url: str) -> None:
    """obstore's runtime does not survive fork(): a forked child that calls it hangs or crashes, even through a
    store it opens itself. One line instead, naming the way out."""
    global _STARTED_IN
    if _STARTED_IN is None:
        _STARTED_IN = os.getpid()
    elif _STARTED_IN != os.getpid():
        raise StoreError(
            f"{url}: remote shard folders cannot be read in a process forked after the parent read one "
            "(obstore's runtime does not survive fork); read them in the parent or in a spawned process"
        )


class _Permanent(Exception):
    """An answer retrying cannot change (no such object, access denied)."""

    def __init__(self, message: str, *, missing: bool = False) -> None:
        super().__init__(message)
        self.missing = missing


def _classify(exc: BaseException) -> BaseException:
    from obstore.exceptions import NotFoundError, PermissionDeniedError, UnauthenticatedError

    if isinstance(exc, FileNotFoundError | NotFoundError):
        return _Permanent("no such object", missing=True)
    if isinstance(exc, PermissionDeniedError | UnauthenticatedError):
        return _Permanent(f"access denied; check the credentials ({_reason(exc)})")
    return exc


class ObjectStoreFolder:
    """A folder at a remote address read and written through an obstore store (HTTP, S3, GCS)."""

    def __init__(
        self, address: str, store, *, writable: bool, tries: int = DEFAULT_TRIES, backoff_s: float = 0.2
    ) -> None:
        self.address = address.rstrip("/")
        self._store, self.writable = store, writable
        self.tries, self.backoff_s = tries, backoff_s
        self._ob = _obstore(urlsplit(address).scheme)

    def url(self, name: str) -> str:
        return f"{self.address}/{name}"

    def _retry(self, name: str, what: str, call: Callable[[], T]) -> T:
        _check_not_forked(self.url(name))
        for attempt in range(1, self.tries + 1):
            try:
                return call()
            except Exception as exc:  # noqa: BLE001 (the library raises many types; classified below)
                why = _classify(exc)
                if isinstance(why, _Permanent):
                    kind = ObjectMissing if why.missing else StoreError
                    raise kind(f"{self.url(name)}: {why}") from None
                if attempt == self.tries:
                    raise StoreError(
                        f"{self.url(name)}: {what} failed {self.tries} times, giving up ({_reason(why)})"
                    ) from None
                time.sleep(min(self.backoff_s * 2 ** (attempt - 1), 5.0))
        raise AssertionError("unreachable")

    def size(self, name: str) -> int:
        return int(self._retry(name, "HEAD", lambda: self._ob.head(self._store, name))["size"])

    def exists(self, name: str) -> bool:
        try:
            self.size(name)
        except ObjectMissing:
            return False
        return True

    def read(self, name: str) -> bytes:
        return b"".join(self.stream(name))

    def read_range(self, name: str, start: int, length: int) -> bytes:
        if length == 0:
            return b""

        def get() -> bytes:
            data = bytes(self._ob.get_range(self._store, name, start=start, length=length))
            if len(data) != length:  # a short body without an error: treat as a drop and ask again
                raise ConnectionError(f"{len(data)} of {length} bytes at {start}")
            return data

        return self._retry(name, f"range read of {length} bytes at {start}", get)

    def stream(self, name: str, chunk_bytes: int = 8 << 20) -> Iterator[bytes]:
        """The whole object; a cut connection resumes from the last byte received (same ETag), each piece
        with its own `tries`; a body that still ends short raises rather than return a short object."""
        first = self._retry(name, "GET", lambda: self._ob.get(self._store, name))
        size, etag = int(first.meta["size"]), first.meta.get("e_tag")
        received, result, failures = 0, first, 0
        while True:
            try:
                for chunk in result.stream(min_chunk_size=chunk_bytes):
                    data = bytes(chunk)
                    received += len(data)
                    yield data
                if received > size:
                    raise StoreError(f"{self.url(name)}: {received} bytes received, the object has {size}")
                if received == size:
                    return
                why: BaseException = ConnectionError(f"body ended after {received} of {size} bytes")
            except StoreError:
                raise
            except Exception as exc:  # noqa: BLE001 (a dropped body surfaces as the library's generic error)
                why = exc
            failures += 1
            if failures >= self.tries:
                raise StoreError(
                    f"{self.url(name)}: connection dropped {failures} times, giving up after "
                    f"{received:,} of {size:,} bytes ({_reason(why)})"
                )
            time.sleep(min(self.backoff_s * 2 ** (failures - 1), 5.0))
            result = self._resume(name, received, etag)

    def _resume(self, name: str, offset: int, etag: str | None):
        options: dict = {"range": {"offset": offset}}
        if etag:
            options["if_match"] = etag  # the same object, or an error: never bytes from two versions

        return self._retry(name, f"GET from byte {offset}", lambda: self._ob.get(self._store, name, options=options))

    def subfolders(self) -> list[str]:
        """S3/GCS: a delimiter listing. HTTP has no listing (nginx answers no PROPFIND): the usual split names
        whose manifest.json answers."""
        if self.address.startswith(("http://", "https://")):
            return [split for split in ("train", "val", "test") if self.exists(f"{split}/manifest.json")]
        listing = self._retry("", "LIST", lambda: self._ob.list_with_delimiter(self._store))
        return sorted(prefix.rstrip("/").rsplit("/", 1)[-1] for prefix in listing["common_prefixes"])

    def _check_writable(self, name: str) -> None:
        if not self.writable:
            raise StoreError(
                f"{self.url(name)}: http(s):// shard folders are read-only; write to a local folder or s3:// "
                "and serve that"
            )

    def upload(self, local: Path, name: str, *, sha256: str | None = None) -> None:
        """One PUT (a multipart upload above 5 MB parts): the object appears whole or not at all. The sha256
        goes into the object's user metadata, so a resumed upload can skip objects already there."""
        local = Path(local)
        self._check_writable(name)
        attributes = {"sha256": sha256} if sha256 else None
        self._retry(name, f"upload of {local}", lambda: self._ob.put(self._store, name, local, attributes=attributes))

    def stored_sha256(self, name: str) -> str | None:
        try:
            result = self._retry(name, "HEAD", lambda: self._ob.get(self._store, name, options={"head": True}))
        except ObjectMissing:
            return None
        return result.attributes.get("sha256")

    def delete(self, name: str) -> None:
        self._check_writable(name)
        self._retry(name, "DELETE", lambda: self._ob.delete(self._store, name))


def _retry_off() -> dict:
    return {"max_retries": 0, "retry_timeout": timedelta(seconds=60)}


def _client_options(endpoint: str | None) -> dict:
    # Plain http:// endpoints (a MinIO or moto on the local network) must be allowed explicitly.
    return {"allow_http": True} if (endpoint or "").startswith("http://") else {}


def open_http(address: str) -> ObjectStoreFolder:
    ob = _obstore(urlsplit(address).scheme)
    store = ob.store.HTTPStore.from_url(
        address.rstrip("/") + "/", client_options=_client_options(address), retry_config=_retry_off()
    )
    return ObjectStoreFolder(address, store, writable=False)


def _s3_credentials():
    """boto3's provider chain when boto3 is installed (reads ~/.aws too); None: obstore's own chain."""
    import importlib.util

    if importlib.util.find_spec("boto3") is None:
        return None
    import logging

    from obstore.auth.boto3 import Boto3CredentialProvider

    # botocore says at INFO where it found credentials ("Found credentials in environment variables."),
    # once per store: noise in every command's log. Its warnings and errors still show.
    logging.getLogger("botocore.credentials").setLevel(logging.WARNING)

    try:
        return Boto3CredentialProvider()
    except ValueError:  # boto3 found no credentials at all: let obstore try (instance role, anonymous)
        return None


def open_s3(address: str) -> ObjectStoreFolder:
    ob = _obstore("s3")
    parts = urlsplit(address)
    if not parts.netloc:
        raise StoreError(f"{address}: no bucket; write s3://BUCKET/PREFIX")
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    store = ob.store.S3Store(
        parts.netloc,
        prefix=parts.path.strip("/") or None,
        credential_provider=_s3_credentials(),
        client_options=_client_options(endpoint),
        retry_config=_retry_off(),
    )
    return ObjectStoreFolder(address, store, writable=True)


def open_gcs(address: str) -> ObjectStoreFolder:
    ob = _obstore("gs")
    parts = urlsplit(address)
    if not parts.netloc:
        raise StoreError(f"{address}: no bucket; write gs://BUCKET/PREFIX")
    store = ob.store.GCSStore(parts.netloc, prefix=parts.path.strip("/") or None, retry_config=_retry_off())
    return ObjectStoreFolder(address, store, writable=True)
