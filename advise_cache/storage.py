"""Where a store lives: a local folder, or a prefix in an object store (s3://, gs://, az://).

    store_location("ucf101.zarr")             -> Path("ucf101.zarr")   (the local fast path)
    store_location("file:///data/ucf101.zarr") -> Path("/data/ucf101.zarr")
    store_location("s3://bucket/ucf101.zarr")  -> StoreURL("s3://bucket/ucf101.zarr")
    store_location("s3:") or "hdfs://x"         -> StoreError: one line, before anything is made

Everything the project does on a bucket goes through `Bucket` (obstore underneath: chosen over
fsspec/s3fs by measurement, BENCHMARKS.md), on keys relative to the store's prefix. Credentials
and the endpoint come from the standard environment (AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL,
GOOGLE_SERVICE_ACCOUNT, AZURE_STORAGE_ACCOUNT_NAME, ...), and `set_storage_options` (the CLI's
`--storage-options JSON`, or ADVISE_STORAGE_OPTIONS) adds obstore's own settings. Nothing here
imports zarr; obstore is imported when a bucket is first used.
"""

from __future__ import annotations

import json
import logging
import os
import re
import urllib.parse
from pathlib import Path

from .errors import StoreError, first_line

log = logging.getLogger(__name__)

SCHEMES = ("s3", "gs", "az")  # object stores the project reads and writes; file:// is a local path
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):(.*)", re.S)  # two letters at least: never a drive
_KNOWN = (*SCHEMES, "file", "s3a", "gcs", "abfs", "abfss", "azure", "http", "https", "memory", "hdfs")
_options: dict = {}


class StoreURL:
    """A store in an object store: scheme://bucket/prefix (no trailing slash). Joins like a Path
    (`url / "ifm"`) for messages; it has no file-system path on purpose. Not a dataclass: a
    config holding one writes it as its text (`dataclasses.asdict` would make it a dict)."""

    __slots__ = ("url",)

    def __init__(self, url: str):
        self.url = url

    def __eq__(self, other) -> bool:
        return isinstance(other, StoreURL) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    def __repr__(self) -> str:
        return f"StoreURL({self.url!r})"

    def __str__(self) -> str:
        return self.url

    def __truediv__(self, part: str) -> StoreURL:
        return StoreURL(f"{self.url}/{str(part).strip('/')}")

    @property
    def scheme(self) -> str:
        return self.url.split("://", 1)[0]

    @property
    def name(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    @property
    def stem(self) -> str:
        return Path(self.name).stem


Location = Path | StoreURL


def store_location(text: str | Path | StoreURL, flag: str = "store") -> Location:
    """A store's place from what a user typed: a Path for plain paths and file:// URLs, a
    StoreURL for s3://, gs:// and az://. Anything else that looks like a URL (an unknown scheme,
    `s3:` without its `//`, a Path that lost it) is one StoreError naming the flag."""
    if isinstance(text, StoreURL):
        return text
    if isinstance(text, Path):
        head = text.parts[0].rstrip(":").lower() if text.parts and text.parts[0].endswith(":") else None
        if head in _KNOWN:
            raise StoreError(f"{flag} {text}: looks like a URL that lost its '//' (write {head}://BUCKET/PATH)")
        return text
    m = _SCHEME.fullmatch(text)
    if m is None:
        return Path(text)
    scheme, rest = m[1].lower(), m[2]
    if scheme == "file":
        parsed = urllib.parse.urlparse(text)
        if not rest.startswith("//") or parsed.netloc not in ("", "localhost") or not parsed.path:
            raise StoreError(f"{flag} {text}: a file URL is file:///ABSOLUTE/PATH")
        return Path(urllib.parse.unquote(parsed.path))
    if scheme in SCHEMES:
        bucket, _, prefix = rest[2:].partition("/") if rest.startswith("//") else ("", "", "")
        if not bucket:
            raise StoreError(f"{flag} {text}: a bucket URL is {scheme}://BUCKET/PATH")
        prefix = "/".join(p for p in prefix.split("/") if p)
        return StoreURL(f"{scheme}://{bucket}" + (f"/{prefix}" if prefix else ""))
    if rest.startswith("//") or scheme in _KNOWN:
        raise StoreError(
            f"{flag} {text}: cannot store to {scheme!r} URLs; use a path, file://, "
            + ", ".join(f"{s}://" for s in SCHEMES)
        )
    return Path(text)  # a local name with a colon in it


def describe(location: Location) -> str:
    """What a run records as its store: the absolute path, or the URL."""
    return str(location) if isinstance(location, StoreURL) else str(Path(location).resolve())


def set_storage_options(text: str | None) -> None:
    """obstore settings for every bucket opened afterwards, as JSON (e.g. '{"region": "eu-west-1",
    "client_options": {"timeout": "60s"}}'); None reads ADVISE_STORAGE_OPTIONS."""
    global _options
    text = os.environ.get("ADVISE_STORAGE_OPTIONS") if text is None else text
    try:
        value = json.loads(text) if text else {}
    except json.JSONDecodeError as e:
        raise StoreError(f"--storage-options: not JSON ({e.msg} at character {e.pos})") from None
    if not isinstance(value, dict):
        raise StoreError("--storage-options: expected a JSON object of obstore settings")
    _options = value
    _BUCKETS.clear()


def _object_store(url: StoreURL):
    """The obstore store rooted at the URL's prefix, configured from the environment and the options."""
    from obstore.store import from_url

    options = {**_options}
    client = dict(options.pop("client_options", {}))
    endpoint = options.get("endpoint") or os.environ.get("AWS_ENDPOINT_URL", "")
    if url.scheme == "s3" and endpoint.startswith("http://"):  # an emulator or an on-site store
        client.setdefault("allow_http", True)
    try:
        return from_url(url.url, client_options=client or None, **options)
    except Exception as e:  # obstore's configuration errors
        raise StoreError(f"{url}: cannot open it: {first_line(e, 200)}") from None


_BUCKETS: dict[str, Bucket] = {}


def bucket(url: StoreURL) -> Bucket:
    """One client per store URL in a process (its connections are reused)."""
    if url.url not in _BUCKETS:
        _BUCKETS[url.url] = Bucket(url)
    return _BUCKETS[url.url]


class Bucket:
    """The operations a store needs on an object store, on keys relative to the store's prefix.
    Every error of the object store becomes one StoreError line naming the object."""

    def __init__(self, url: StoreURL):
        from obstore.exceptions import NotFoundError

        self.url = url
        self.store = _object_store(url)
        self._missing = (FileNotFoundError, NotFoundError)  # obstore raises either, by call

    def _fail(self, key: str, e: BaseException) -> StoreError:
        return StoreError(f"{self.url / key}: {type(e).__name__}: {first_line(e, 300)}")

    def read(self, key: str) -> bytes | None:
        """The whole object, or None when there is none."""
        import obstore

        try:
            return obstore.get(self.store, key).bytes()
        except self._missing:
            return None
        except Exception as e:
            raise self._fail(key, e) from None

    def read_tail(self, key: str, length: int) -> tuple[bytes, int]:
        """The last `length` bytes of an object (fewer if it is shorter) and its size."""
        import obstore

        try:
            got = obstore.get(self.store, key, options={"range": {"suffix": length}})
            return got.bytes(), int(got.meta["size"])
        except self._missing:
            raise StoreError(f"{self.url / key} is missing: the store is damaged") from None
        except Exception as e:
            raise self._fail(key, e) from None

    def read_ranges(self, key: str, starts: list[int], lengths: list[int]) -> list:
        """Byte ranges of one object, fetched concurrently (buffers, in the order asked)."""
        import obstore

        try:
            return obstore.get_ranges(self.store, key, starts=starts, lengths=lengths)
        except self._missing:
            raise StoreError(f"{self.url / key} is missing: the store is damaged") from None
        except Exception as e:
            raise self._fail(key, e) from None

    def write(self, key: str, data, only_new: bool = False) -> bool:
        """Write one object whole (durable when this returns). `only_new`: a conditional write that
        leaves an existing object alone and returns False."""
        import obstore
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        try:
            obstore.put(self.store, key, data, mode="create" if only_new else "overwrite", use_multipart=False)
            return True
        except (AlreadyExistsError, PreconditionError):
            return False
        except Exception as e:
            raise self._fail(key, e) from None

    def exists(self, key: str) -> bool:
        return self.size(key) is not None

    def size(self, key: str) -> int | None:
        import obstore

        try:
            return int(obstore.head(self.store, key)["size"])
        except self._missing:
            return None
        except Exception as e:
            raise self._fail(key, e) from None

    def sizes(self, prefix: str = "") -> dict[str, int]:
        """Every object under `prefix` (relative keys) with its size: one listing."""
        import obstore

        try:
            out = {}
            for page in obstore.list(self.store, prefix=prefix or None, chunk_size=1000):
                out.update({o["path"]: int(o["size"]) for o in page})
            return out
        except Exception as e:
            raise self._fail(prefix, e) from None

    def delete(self, keys: list[str]) -> None:
        """Delete objects; absent ones are fine."""
        import obstore

        if not keys:
            return
        try:
            obstore.delete(self.store, keys)
        except self._missing:
            pass
        except Exception as e:
            raise self._fail(keys[0], e) from None
