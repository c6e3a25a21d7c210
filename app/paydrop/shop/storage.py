"""Where product files live: a local directory or an S3-compatible bucket.

Keys are relative paths such as ``products/field-guide/3f2a9c.../field-guide.pdf``.
Nothing here is ever served under a public URL: downloads go through
``downloads.py``, which checks a grant first.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Any
from urllib.parse import quote

from flask import Flask, current_app

from ..settings import SettingsError

_EXTENSION = "paydrop.storage"
CHUNK = 64 * 1024


class StorageError(Exception):
    pass


def validate_key(key: str) -> str:
    path = PurePosixPath(key)
    if not key or path.is_absolute() or any(part in ("", ".", "..") for part in key.split("/")):
        raise StorageError(f"invalid storage key: {key!r}")
    return key


def asset_key(slug: str, filename: str, sha256: str) -> str:
    """Content-addressed, so replacing a product's file never changes bytes already sold."""
    return validate_key(f"products/{slug}/{sha256[:16]}/{PurePosixPath(filename).name}")


def sha256_of(stream: IO[bytes]) -> str:
    digest = hashlib.sha256()
    for chunk in iter(lambda: stream.read(CHUNK), b""):
        digest.update(chunk)
    stream.seek(0)
    return digest.hexdigest()


def content_disposition(filename: str) -> str:
    """``attachment`` with an ASCII ``filename`` and the exact name as RFC 5987 ``filename*``."""
    ascii_name = filename.encode("ascii", "replace").decode().replace('"', "").replace("?", "_")
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename)}"


class Stream:
    """An object's bytes, opened (so a missing object is known before the
    response starts) and closed by ``close()``, which the WSGI server calls
    whether or not the body was read: an abandoned response leaks no file
    handle or S3 connection."""

    def __init__(self, chunks: Iterator[bytes], close: Callable[[], None]) -> None:
        self._chunks = chunks
        self._close = close
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._chunks
        finally:
            self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._close()


class LocalStorage:
    kind = "local"

    def __init__(self, root: str) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        path = (self.root / validate_key(key)).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise StorageError(f"key escapes the storage directory: {key!r}")
        return path

    def put(self, key: str, stream: IO[bytes], content_type: str) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        with partial.open("wb") as out:
            shutil.copyfileobj(stream, out, CHUNK)
        partial.replace(path)

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def open_stream(self, key: str) -> Stream:
        try:
            handle = self.path(key).open("rb")
        except FileNotFoundError as exc:
            raise StorageError(f"missing object {key!r}") from exc
        return Stream(iter(lambda: handle.read(CHUNK), b""), handle.close)


class S3Storage:
    kind = "s3"

    def __init__(
        self, bucket: str, endpoint_url: str, region: str, access_key_id: str, secret_key: str
    ) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint_url or None,
            region_name=region,
            aws_access_key_id=access_key_id or None,
            aws_secret_access_key=secret_key or None,
            config=Config(signature_version="s3v4", retries={"max_attempts": 3},
                          connect_timeout=5, read_timeout=30),
        )

    def put(self, key: str, stream: IO[bytes], content_type: str) -> None:
        self.client.upload_fileobj(
            stream, self.bucket, validate_key(key), ExtraArgs={"ContentType": content_type}
        )

    def exists(self, key: str) -> bool:
        """True when the object is there; StorageError when S3 cannot say."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=validate_key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise StorageError(f"cannot check {key!r}: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"cannot check {key!r}: {exc}") from exc
        return True

    def open_stream(self, key: str) -> Stream:
        from botocore.exceptions import ClientError

        try:
            body = self.client.get_object(Bucket=self.bucket, Key=validate_key(key))["Body"]
        except ClientError as exc:
            raise StorageError(f"cannot read {key!r}: {exc}") from exc
        return Stream(body.iter_chunks(CHUNK), body.close)

    def presigned_url(self, key: str, filename: str, content_type: str, expires: int) -> str:
        params: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": validate_key(key),
            "ResponseContentDisposition": content_disposition(filename),
            "ResponseContentType": content_type,
        }
        return str(self.client.generate_presigned_url("get_object", Params=params,
                                                      ExpiresIn=expires))


def init_app(app: Flask) -> None:
    config = app.config
    backend: LocalStorage | S3Storage
    if config["STORAGE_BACKEND"] == "s3":
        backend = S3Storage(
            config["S3_BUCKET"],
            config["S3_ENDPOINT_URL"],
            config["S3_REGION"],
            config["S3_ACCESS_KEY_ID"],
            config["S3_SECRET_ACCESS_KEY"],
        )
    else:
        backend = LocalStorage(config["STORAGE_LOCAL_DIR"])
        _refuse_public_directory(app, backend.root)
    app.extensions[_EXTENSION] = backend


def _refuse_public_directory(app: Flask, root: Path) -> None:
    """Paid files must never sit where a public URL reaches them: the static
    folder is served by Flask and, in production, by nginx from the release."""
    from ..static_files import STATIC_DIR

    static = STATIC_DIR.resolve()
    resolved = root.resolve()
    if resolved.is_relative_to(static) or static.is_relative_to(resolved):
        raise SettingsError([f"STORAGE_LOCAL_DIR: {root} overlaps the public static folder "
                             f"{static}; paid files would be downloadable for free"])


def get_storage() -> LocalStorage | S3Storage:
    backend: LocalStorage | S3Storage = current_app.extensions[_EXTENSION]
    return backend
