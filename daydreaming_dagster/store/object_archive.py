"""The write-once archive and the claims on an S3 data root: the object-store halves of
responses.py and claims.py, built on S3Store's conditional writes instead of locks and renames.

- A response is stored sidecar first, then its text with `If-None-Match: *`: the text is the
  commit point, so a reader that sees a text sees its sidecar, and a second writer's create fails
  (412) and goes through the same reuse-or-reject as on disk (responses.settle_existing).
- Superseding copies the text and sidecar to `_superseded/<name>.<n>` (each created only where
  nothing is), then deletes the sidecar and the text each `If-Match` the ETag that was copied: an
  answer that changed meanwhile is not deleted, and nothing is deleted before its copy exists.
- Claims are objects created `If-None-Match: *` and renewed, taken over and deleted `If-Match`
  their ETag, so the lease logic of claims.Claims runs unchanged."""

from __future__ import annotations

import contextlib

from botocore.exceptions import BotoCoreError, ClientError

from .layout import SUPERSEDED, sidecar_path
from .object_paths import S3Path


class ObjectClaims:
    """claims.ClaimBackend on S3: the version of a claim is its ETag. A failed request (network,
    throttling past boto3's retries) is raised as OSError, which the claim heartbeat treats as a
    passing fault and retries on its next beat, as it does for a file system's."""

    def create(self, path: S3Path, data: bytes) -> str | None:
        with _as_os_error():
            return path.store.create(path.key, data)

    def read(self, path: S3Path) -> tuple[bytes, str] | None:
        with _as_os_error():
            return path.store.get(path.key)

    def replace(self, path: S3Path, data: bytes, version: str) -> str | None:
        with _as_os_error():
            return path.store.replace(path.key, data, version)

    def delete(self, path: S3Path, version: str) -> bool:
        with _as_os_error():
            return path.store.delete(path.key, version)


@contextlib.contextmanager
def _as_os_error():
    try:
        yield
    except (BotoCoreError, ClientError) as exc:
        raise OSError(f"object store request failed: {exc}") from exc


def write_object_once(path: S3Path, text: str, provenance: dict, sidecar: bytes) -> bool:
    """responses.write_response_once on S3 (see the module docstring)."""
    from .write_once import StoredResponseConflict, keep_rejected, settle_existing

    store, data = path.store, text.encode("utf-8")
    stored = store.get(path.key)
    if stored is not None:
        return settle_existing(path, stored[0].decode("utf-8"), text, provenance)
    side = sidecar_path(path)
    # A sidecar without its text is one a writer left when it was killed between its two writes
    # (or one being written right now): replace exactly the version we read.
    for _ in range(3):
        previous = store.get(side.key)
        if previous is None:
            mine = store.create(side.key, sidecar)
        else:
            mine = store.replace(side.key, sidecar, previous[1])
        if mine is not None:
            break
    if mine is not None and store.create(path.key, data) is not None:
        return True
    # Another writer stored this response between our look and our create (possible only after
    # its claim was taken over): give it back its sidecar, then settle as on disk.
    if mine is not None and previous is not None:
        store.replace(side.key, previous[0], mine)
    stored = store.get(path.key)
    if stored is None:  # another writer keeps rewriting the sidecar: keep this paid answer aside
        kept = keep_rejected(path, text, provenance, "another writer was storing this response at the same moment")
        raise StoredResponseConflict(f"{path} was being stored by another writer at the same moment; this answer is kept at {kept}.")
    return settle_existing(path, stored[0].decode("utf-8"), text, provenance)


def move_object_aside(path: S3Path) -> S3Path | None:
    """responses.move_aside on S3: copy aside, then delete only the versions copied."""
    store = path.store
    stored = store.get(path.key)
    if stored is None:
        return None
    side = sidecar_path(path)
    side_stored = store.get(side.key)
    folder = path.parent / SUPERSEDED
    n = 1
    while True:
        target = folder / f"{path.stem}.{n}{path.suffix}"
        if store.head(sidecar_path(target).key) is None and store.create(target.key, stored[0]) is not None:
            break
        n += 1
    if side_stored is not None:
        store.put(sidecar_path(target).key, side_stored[0])
        # Sidecar first, as on disk: a failure in between leaves the text without a sidecar,
        # which counts as a response of unknown provenance (never reused, never overwritten).
        store.delete(side.key, side_stored[1])
    if not store.delete(path.key, stored[1]):
        raise RuntimeError(f"{path} changed while it was being moved aside; its copy is kept at {target}. Run again.")
    return target

