"""Adding a model to a fleet's shared store from an archive (POST /v1/admin/store).

The archive is what `bentoml models export TAG` writes (a `.bentomodel`). It is unpacked
by BentoML into a private staging folder on the same volume, checked, and renamed into
the store in one step, so that no replica ever sees half a model:
  - it must be this project's model: a scikit-learn model (`bentoml.sklearn`) whose
    metadata holds the input schema registration saved (`python -m training`); another
    archive is a 400 and nothing is stored;
  - its tag must not be in the store (409), unless `force` replaces it, and then only
    when no routing in force names it (409 too).
A pushed tag is not served until a routing change names it, which loads and warms it up
as every change does. An archive holds a pickled scikit-learn pipeline: loading it runs
code, so pushing is exactly as trusted as the admin key (docs/operations.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_server.config.settings import check_tag
from model_server.constants import SCHEMA_METADATA_KEY
from model_server.errors import InvalidInput, StoreConflict
from model_server.files import sync_directory, write_atomically
from model_server.models.schema import InputSchema

# Where archives are unpacked before they are renamed into the store: beside `models/`
# on the shared volume, so that the rename stays within one filesystem.
STAGING = ".incoming"
# The only BentoML framework module this server loads (models/registry.py).
SKLEARN_MODULE = "bentoml.sklearn"


@dataclass(frozen=True)
class Pushed:
    """A model added to the store: its tag, the archive's size and sha256, and whether it
    replaced a stored tag of the same name."""

    tag: str
    size: int
    sha256: str
    replaced: bool

    def to_json(self) -> dict[str, Any]:
        return {"tag": self.tag, "bytes": self.size, "sha256": self.sha256, "replaced": self.replaced}


def digest(archive: bytes) -> str:
    return hashlib.sha256(archive).hexdigest()


def store_archive(archive: bytes, store: Path, serving: set[str], force: bool) -> Pushed:
    """Check `archive` and rename its model into `store` (a BentoML model store folder);
    `serving` are the tags a routing in force names. Blocking: call it in a thread."""
    if not archive:
        raise InvalidInput.at(["body"], "is empty; send the file `bentoml models export TAG` writes", "missing")
    staging_root = store.parent / STAGING
    staging_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="push-", dir=staging_root))
    try:
        tag, unpacked = _unpack(archive, staging)
        name, version = tag.split(":")
        target = store / name / version
        replaced = target.exists()
        if replaced and not force:
            raise StoreConflict(f"'{tag}' is already in the model store; push with force to replace it", "tag_exists")
        if replaced and tag in serving:
            raise StoreConflict(
                f"'{tag}' serves now; a serving tag cannot be replaced (push it as a new version)", "tag_serving"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        if replaced:
            # Out of the way in one rename (a reader sees the old model or none), then the new one in.
            os.rename(target, staging / "replaced")
        try:
            os.rename(unpacked, target)
        except OSError:  # another push of the same tag won the race
            raise StoreConflict(f"'{tag}' was stored by another push meanwhile", "tag_exists") from None
        write_atomically(target.parent / "latest", version)
        sync_directory(target.parent)
        return Pushed(tag, len(archive), digest(archive), replaced)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _unpack(archive: bytes, staging: Path) -> tuple[str, Path]:
    """Unpack with BentoML into a store of its own in `staging`; the tag and its folder."""
    import bentoml
    from bentoml._internal.models import ModelStore

    path = staging / "archive.bentomodel"
    path.write_bytes(archive)
    (staging / "store").mkdir()
    unpacked_store = ModelStore(str(staging / "store"))
    try:
        model = bentoml.models.import_model(str(path), _model_store=unpacked_store)
    except Exception as exc:  # BentoML raises many kinds for a file that is not its archive
        raise InvalidInput.at(
            ["body"],
            f"is not a model archive that `bentoml models export` writes ({type(exc).__name__})",
            "not_an_archive",
        ) from None
    tag = str(model.tag)
    try:
        check_tag(tag)
    except ValueError as exc:
        raise InvalidInput.at(["body", "tag"], str(exc), "tag") from None
    info = model.info
    if info.module != SKLEARN_MODULE or SCHEMA_METADATA_KEY not in info.metadata:
        raise InvalidInput.at(
            ["body"],
            f"'{tag}' is not a model of this server: it has no input schema in its metadata (models come from "
            "`python -m training`, which saves one)",
            "foreign_archive",
        )
    try:
        InputSchema.from_dict(info.metadata[SCHEMA_METADATA_KEY])  # type: ignore[arg-type]
    except Exception as exc:
        raise InvalidInput.at(
            ["body", "metadata", SCHEMA_METADATA_KEY], f"cannot be read: {exc}"[:200], "foreign_archive"
        ) from None
    folder = staging / "store" / model.tag.name / str(model.tag.version)
    with contextlib.suppress(OSError):
        os.chmod(folder, 0o755)
    return tag, folder
