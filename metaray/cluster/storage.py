"""Run directories in storage a URI names (`s3://`, `gs://`, `hdfs://`, `file://`, ...), through
the filesystems of pyarrow (what Ray uses for its own storage paths).

The run works in a local copy of the run directory, as it does for a plain path; a `RunStorage`
pulls that copy from the URI before the run and pushes it back while it runs (every new
checkpoint, and the progress files at most every `every_s` seconds) and once at the end.
Object stores have no rename, so a checkpoint is uploaded file by file and only counts once its
`COMMITTED` marker, uploaded last, is there: an upload cut short leaves the previous checkpoint as
the newest one. Other files are written under a temporary name and moved into place (a rename on
local and network filesystems; on object stores each object appears whole anyway).

Credentials are the filesystem's own: for S3 the AWS_* variables, ~/.aws or the instance's role
(IRSA on EKS); for GCS GOOGLE_APPLICATION_CREDENTIALS or the node's service account (Workload
Identity on GKE).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from metaray.cluster.checkpoint import CHECKPOINTS, PREFIX, CheckpointError

COMMITTED = "COMMITTED"
UNPUSHED = ".unpushed"  # in a local copy whose last upload failed: never wiped by a pull
# what a run writes at the top of its directory and needs back to go on (eval.json and plots are
# `metaray eval`'s and `metaray plot`'s: a training run never overwrites them)
RUN_FILES = ("config.yaml", "progress.jsonl", "driver.json", "driver.log")
NOT_UPLOADED = ("grpc_token",)  # a credential stays on the machine that made it
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class StorageError(CheckpointError):
    """A storage URI that cannot be used or an upload that failed; the message is one line."""


def is_uri(text: str | Path) -> bool:
    """True for `scheme://...` (a run directory in storage), False for a plain path."""
    return isinstance(text, str) and bool(_URI.match(text))


def staging_dir(uri: str) -> Path:
    """Where the run in `uri` is worked on on this machine: the same place for the same URI (so
    `metaray scale URI` finds the driver's copy), under $METARAY_STAGING_DIR or ~/.cache/metaray/runs."""
    base = Path(os.environ.get("METARAY_STAGING_DIR") or Path.home() / ".cache" / "metaray" / "runs")
    digest = hashlib.blake2b(uri.rstrip("/").encode(), digest_size=6).hexdigest()
    return base / digest / (uri.rstrip("/").rsplit("/", 1)[-1] or "run")


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


class RunStorage:
    """The run directory at `uri`, worked on in the local folder `local`."""

    def __init__(self, uri: str, local: Path):
        try:
            import pyarrow
            import pyarrow.fs
        except ImportError:
            raise StorageError(f"{uri}: a run directory in storage needs pyarrow (pip install 'metaray[storage]')") from None
        self.uri, self.local = uri.rstrip("/"), Path(local)
        try:
            self.fs, root = pyarrow.fs.FileSystem.from_uri(self.uri)
        except (OSError, ValueError, pyarrow.ArrowException) as err:
            raise StorageError(f"{self.uri}: cannot open this storage URI ({_first_line(err)})") from None
        self.root = root.rstrip("/")
        self._file_type = pyarrow.fs.FileType
        self._uploaded: dict[str, tuple[int, int]] = {}  # relative path -> (size, mtime_ns) when last pushed
        self._committed: set[str] = set()  # checkpoints known to be complete in storage
        self._last_push = 0.0

    # ------------------------------------------------------------------ reading
    def _remote(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def _call(self, what: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except OSError as err:
            raise StorageError(f"{self.uri}: {what} failed ({_first_line(err)})") from None

    def exists(self, rel: str) -> bool:
        info = self._call(f"reading {rel}", self.fs.get_file_info, self._remote(rel))
        return info.type != self._file_type.NotFound

    def committed_checkpoints(self) -> list[str]:
        """Names of the checkpoints complete in storage (their marker is there), oldest first."""
        import pyarrow.fs

        selector = pyarrow.fs.FileSelector(self._remote(CHECKPOINTS), allow_not_found=True, recursive=True)
        infos = self._call("listing checkpoints", self.fs.get_file_info, selector)
        prefix = self._remote(CHECKPOINTS) + "/"
        names = set()
        for info in infos:
            parts = info.path[len(prefix):].split("/") if info.path.startswith(prefix) else []
            if len(parts) == 2 and parts[1] == COMMITTED and parts[0].startswith(PREFIX) and parts[0][len(PREFIX):].isdigit():
                names.add(parts[0])
        return sorted(names, key=lambda n: int(n[len(PREFIX):]))

    def _download(self, rel: str, target: Path) -> None:
        info = self._call(f"reading {rel}", self.fs.get_file_info, self._remote(rel))
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.part")
        try:
            with self._call(f"reading {rel}", self.fs.open_input_stream, self._remote(rel)) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise StorageError(f"{self.uri}: reading {rel} failed ({_first_line(err)})") from None
        os.replace(tmp, target)
        if info.mtime_ns:  # the remote's age (`metaray status` says how long ago the run wrote)
            os.utime(target, ns=(info.mtime_ns, info.mtime_ns))
        stat = target.stat()
        self._uploaded[rel] = (stat.st_size, stat.st_mtime_ns)

    def pull(self, files: tuple[str, ...] = RUN_FILES, checkpoints: bool = True) -> Path:
        """A fresh local copy of the run's `files` (those that exist) and its complete checkpoints."""
        import pyarrow.fs

        if (self.local / UNPUSHED).exists():
            raise StorageError(f"{self.local} holds changes of {self.uri} that were never uploaded (the last upload "
                               "failed): copy them there by hand, then remove the folder")
        shutil.rmtree(self.local, ignore_errors=True)
        self.local.mkdir(parents=True)
        for name in files:
            if self.exists(name):
                self._download(name, self.local / name)
        self._committed = set(self.committed_checkpoints())
        if checkpoints:
            for name in self._committed:
                final = self.local / CHECKPOINTS / name
                tmp = final.with_name(f".tmp-{name}")
                listing = self._call("listing a checkpoint", self.fs.get_file_info,
                                     pyarrow.fs.FileSelector(self._remote(f"{CHECKPOINTS}/{name}")))
                for info in listing:
                    if info.type == self._file_type.File and info.base_name != COMMITTED:
                        self._download(f"{CHECKPOINTS}/{name}/{info.base_name}", tmp / info.base_name)
                os.replace(tmp, final)
        return self.local

    # ------------------------------------------------------------------ writing
    def _upload(self, rel: str, atomic: bool = True) -> None:
        source = self.local / rel
        stat = source.stat()
        final = self._remote(rel)
        target = f"{final}.tmp-{os.getpid()}" if atomic else final
        try:  # a network error mid-copy is an OSError too: one StorageError for any of it
            self.fs.create_dir(final.rsplit("/", 1)[0], recursive=True)
            with open(source, "rb") as src, self.fs.open_output_stream(target) as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            if atomic:
                self.fs.move(target, final)
        except OSError as err:
            raise StorageError(f"{self.uri}: writing {rel} failed ({_first_line(err)})") from None
        self._uploaded[rel] = (stat.st_size, stat.st_mtime_ns)

    def push(self) -> int:
        """Upload what changed since the last push: new checkpoints (marker last), then the other
        files; then remove the checkpoints the run pruned. Returns how many files were written."""
        written = 0
        root = self.local / CHECKPOINTS
        local_ckpts = sorted((p.name for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX)
                              and p.name[len(PREFIX):].isdigit()), key=lambda n: int(n[len(PREFIX):])) \
            if root.is_dir() else []
        for name in local_ckpts:
            if name in self._committed:
                continue
            for path in sorted((root / name).iterdir()):
                if path.is_file():
                    self._upload(f"{CHECKPOINTS}/{name}/{path.name}", atomic=False)
                    written += 1
            try:
                with self.fs.open_output_stream(self._remote(f"{CHECKPOINTS}/{name}/{COMMITTED}")) as out:
                    out.write(b"")
            except OSError as err:
                raise StorageError(f"{self.uri}: committing checkpoint {name} failed ({_first_line(err)})") from None
            self._committed.add(name)
            written += 1
        for path in sorted(self.local.rglob("*")):
            rel = path.relative_to(self.local).as_posix()
            parts = rel.split("/")
            if not path.is_file() or any(p.startswith(".") for p in parts) or rel in NOT_UPLOADED:
                continue
            if parts[0] == CHECKPOINTS and len(parts) == 3 and parts[1].startswith(PREFIX):
                continue  # checkpoints above; checkpoints/damaged/ is copied as it is
            stat = path.stat()
            if self._uploaded.get(rel) != (stat.st_size, stat.st_mtime_ns):
                self._upload(rel)
                written += 1
        if local_ckpts:  # pruned by checkpoint.keep (or set aside as damaged): gone here, so gone there
            newest = int(local_ckpts[-1][len(PREFIX):])
            for name in sorted(self._committed - set(local_ckpts)):
                if int(name[len(PREFIX):]) < newest:
                    self._call("removing an old checkpoint", self.fs.delete_dir, self._remote(f"{CHECKPOINTS}/{name}"))
                    self._committed.discard(name)
        self._last_push = time.monotonic()
        return written

    def push_file(self, rel: str) -> None:
        """Upload one file of the local copy (e.g. eval.json)."""
        self._upload(rel)

    def keep_unpushed(self) -> None:
        """Mark the local copy as holding changes storage lacks (a pull then refuses to wipe it)."""
        (self.local / UNPUSHED).write_text(f"{self.uri}\n")

    def discard(self) -> None:
        """Remove the local copy (a scratch copy once read) and the folder made for it."""
        shutil.rmtree(self.local.parent if self.local.parent.name.startswith("metaray-run-") else self.local,
                      ignore_errors=True)


class StorageSync:
    """Observer: push the run directory after each new checkpoint and at most every `every_s`
    seconds otherwise. A failed upload is said once per failure and tried again next time
    (training goes on; the final push at the end of the run must succeed)."""

    def __init__(self, storage: RunStorage, log: Any, every_s: float = 60.0):
        self.storage, self.log, self.every_s = storage, log, every_s
        self._last = time.monotonic()
        self._seen: str | None = None

    def observe(self, record: dict[str, Any]) -> None:
        root = self.storage.local / CHECKPOINTS
        newest = max((p.name for p in root.glob(f"{PREFIX}*")), default=None) if root.is_dir() else None
        if newest == self._seen and time.monotonic() - self._last < self.every_s:
            return
        try:
            self.storage.push()
            self._seen = newest
        except StorageError as err:
            self.log(f"upload to {self.storage.uri} failed, will retry: {err}")
        self._last = time.monotonic()

    def close(self) -> None:
        pass


def scratch_copy(uri: str, checkpoints: bool) -> RunStorage:
    """A throwaway local copy of the run at `uri` (eval, status, plot): never the training's own."""
    storage = RunStorage(uri, Path(tempfile.mkdtemp(prefix="metaray-run-")) / (uri.rstrip("/").rsplit("/", 1)[-1] or "run"))
    try:
        if not storage.exists("config.yaml"):
            raise StorageError(f"{storage.uri} is not a metaray run directory (no config.yaml)")
        storage.pull(RUN_FILES + ("eval.json",), checkpoints=checkpoints)
    except BaseException:
        shutil.rmtree(storage.local.parent, ignore_errors=True)
        raise
    return storage
