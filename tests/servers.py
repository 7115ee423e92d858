"""Real servers on localhost for the remote shard folder tests (and the store library benchmark).

- `Nginx(root)`: Debian's nginx serving a folder (byte ranges, ETags, keep-alive: what a real HTTP
  shard host does), run as a non-daemon child with its own prefix and config on a free port.
- `DroppingProxy(port, ...)`: a TCP proxy in front of a server that cuts its first `cuts` connections
  after `cut_after` response bytes, as a network or load balancer does mid-shard.
- `MotoS3()`: moto's S3-compatible server (`moto_server`). No real S3 exists on a test machine; moto is
  a stand-in that speaks the S3 protocol over HTTP (signatures, ranges, multipart uploads), with fake
  credentials that the tests put in their own environment only.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

NGINX_CANDIDATES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, *, what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before listening on port {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout_s:.0f} s")


def nginx_binary() -> str | None:
    found = shutil.which("nginx")
    return found or next((p for p in NGINX_CANDIDATES if os.access(p, os.X_OK)), None)


_NGINX_CONF = """\
daemon off;
master_process off;  # one process as the invoking user: no worker user switch, no pid races with other tests
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/tmp; proxy_temp_path {prefix}/tmp; fastcgi_temp_path {prefix}/tmp;
    uwsgi_temp_path {prefix}/tmp; scgi_temp_path {prefix}/tmp;
    sendfile on;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{ }}
    }}
}}
"""


class Nginx:
    """nginx serving `root` at http://127.0.0.1:<port>/ until stop(); byte ranges are nginx's default."""

    def __init__(self, root: Path) -> None:
        binary = nginx_binary()
        if binary is None:
            raise FileNotFoundError("nginx is not installed (scripts/install_nginx.sh installs Debian's package)")
        self.prefix = Path(tempfile.mkdtemp(prefix="convnets-nginx-"))
        (self.prefix / "tmp").mkdir()
        self.port = free_port()
        conf = self.prefix / "nginx.conf"
        conf.write_text(_NGINX_CONF.format(prefix=self.prefix, port=self.port, root=Path(root).resolve()))
        self.proc = subprocess.Popen(
            [binary, "-p", str(self.prefix), "-e", str(self.prefix / "error.log"), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        wait_for_port(self.port, self.proc, what="nginx")
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.prefix, ignore_errors=True)


class DroppingProxy:
    """Forwards 127.0.0.1:<port> to 127.0.0.1:<upstream>; closes each of its first `cuts` connections once it
    has sent `cut_after` response bytes on it (cuts=None: every connection). `dropped` counts the cuts."""

    def __init__(self, upstream: int, *, cut_after: int, cuts: int | None) -> None:
        self.upstream, self.cut_after, self.cuts_left = upstream, cut_after, cuts
        self.dropped = 0
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _take_cut(self) -> bool:
        with self._lock:
            if self.cuts_left is not None and self.cuts_left <= 0:
                return False
            if self.cuts_left is not None:
                self.cuts_left -= 1
            self.dropped += 1
            return True

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # closed
            upstream = socket.create_connection(("127.0.0.1", self.upstream))
            threading.Thread(target=self._pipe, args=(client, upstream, None), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, self.cut_after), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, cut_after: int | None) -> None:
        sent, armed = 0, cut_after is not None
        try:
            while data := src.recv(1 << 16):
                if armed and sent + len(data) > cut_after:
                    if self._take_cut():
                        dst.sendall(data[: cut_after - sent])
                        break
                    armed = False
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def stop(self) -> None:
        self._server.close()


class MotoS3:
    """moto's S3 stand-in at http://127.0.0.1:<port> until stop(); `env` holds the fake credentials and
    endpoint a test puts in its own environment (AWS_ENDPOINT_URL is how S3 clients find a non-AWS host)."""

    def __init__(self) -> None:
        binary = Path(sys.executable).with_name("moto_server")
        if not binary.exists():
            raise FileNotFoundError(f"{binary} is missing: pip install 'moto[server]' (the dev extra has it)")
        self.port = free_port()
        self.proc = subprocess.Popen(
            [str(binary), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, self.proc, what="moto_server", timeout_s=60)
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.env = {
            "AWS_ACCESS_KEY_ID": "testing-key-id",
            "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
        }

    def client(self):
        """A boto3 client on the stand-in (independent of the code under test)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
            region_name="us-east-1",
        )

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def put_folder(self, local: Path, bucket: str, prefix: str) -> None:
        """Copy a local folder into the bucket with boto3."""
        client = self.client()
        for path in sorted(p for p in Path(local).rglob("*") if p.is_file()):
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(local).as_posix()}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
