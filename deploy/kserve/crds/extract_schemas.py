"""Extract the validation schemas of KServe's ServingRuntime and InferenceService CRDs.

The CRDs in kserve/kserve (config/crd/full/) are about 2 MB of YAML; validation needs
only the openAPIV3Schema of each served version. This script takes it from a release
tag of a kserve/kserve git clone (a bare mirror will do), unchanged, and writes one JSON
file per CRD and version, with where it came from at the top (version, commit, path and
the sha256 of the CRD file as released):

    git clone --bare https://github.com/kserve/kserve /tmp/kserve.git
    python deploy/kserve/crds/extract_schemas.py /tmp/kserve.git v0.20.0

tests/test_kserve_manifests.py validates deploy/kserve/ against these files, offline.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPOSITORY = "https://github.com/kserve/kserve"
CRDS = [
    "config/crd/full/serving.kserve.io_servingruntimes.yaml",
    "config/crd/full/serving.kserve.io_inferenceservices.yaml",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkout", type=Path, help="a git clone of kserve/kserve")
    parser.add_argument("tag", help="the release tag, e.g. v0.20.0")
    args = parser.parse_args(argv)
    commit = _git(args.checkout, "rev-parse", f"{args.tag}^{{commit}}").strip()
    for old in HERE.glob("*.schema.json"):
        old.unlink()
    for path in CRDS:
        text = _git(args.checkout, "show", f"{commit}:{path}")
        for name, document in extract(text, args.tag, commit, path):
            (HERE / name).write_text(document)
            print(f"wrote {name}")
    return 0


def extract(crd_text: str, tag: str, commit: str, path: str) -> list[tuple[str, str]]:
    """(file name, JSON text) for each served version of the CRD in crd_text."""
    crd = yaml.safe_load(crd_text)
    spec = crd["spec"]
    files = []
    for version in spec["versions"]:
        if not version.get("served"):
            continue
        header: dict[str, Any] = {
            "source": {
                "repository": REPOSITORY,
                "release": tag,
                "commit": commit,
                "path": path,
                "url": f"{REPOSITORY}/blob/{commit}/{path}",
                "sha256": hashlib.sha256(crd_text.encode()).hexdigest(),
            },
            "crd": crd["metadata"]["name"],
            "apiVersion": f"{spec['group']}/{version['name']}",
            "kind": spec["names"]["kind"],
        }
        # The header is indented so that `head` shows it; the schema, about 0.7 MB for
        # InferenceService, stays on one line, keys in the CRD's order.
        lines = ["{"] + [f"  {json.dumps(key)}: {json.dumps(value)}," for key, value in header.items()]
        schema = json.dumps(version["schema"]["openAPIV3Schema"], separators=(",", ":"))
        lines += [f'  "openAPIV3Schema": {schema}', "}", ""]
        files.append((f"{spec['names']['plural']}.{version['name']}.schema.json", "\n".join(lines)))
    return files


def _git(checkout: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(checkout), *args], check=True, capture_output=True, text=True).stdout


if __name__ == "__main__":
    raise SystemExit(main())
