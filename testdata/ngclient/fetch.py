#!/usr/bin/env python3
"""Drives python-tuf's ngclient against a repository served over HTTP (interop tests of repo-tool).

usage: fetch.py METADATA_URL TARGETS_URL TRUSTED_ROOT CACHE_DIR DOWNLOAD_DIR [TARGET ...]

Refreshes (TUF client workflow 5.3-5.6), then looks up and downloads each TARGET (delegations are
searched by ngclient). Prints one JSON object per line: {"target", "length", "sha256", "custom", "path"}.
CACHE_DIR keeps trusted metadata between runs (so a second run exercises updates); TRUSTED_ROOT is copied
to CACHE_DIR/root.json only when the cache holds no root yet.
Exits 1 with "FAIL <ExceptionClass>: <message>" on stderr when ngclient refuses anything.
"""
import hashlib
import json
import os
import shutil
import sys

from tuf.ngclient import Updater


def main() -> int:
    metadata_url, targets_url, trusted_root, cache, downloads, *targets = sys.argv[1:]
    os.makedirs(cache, exist_ok=True)
    os.makedirs(downloads, exist_ok=True)
    if not os.path.exists(os.path.join(cache, "root.json")):
        shutil.copyfile(trusted_root, os.path.join(cache, "root.json"))
    try:
        updater = Updater(
            metadata_dir=cache,
            metadata_base_url=metadata_url,
            target_dir=downloads,
            target_base_url=targets_url,
            # None: start from CACHE_DIR/root.json, which is TRUSTED_ROOT on the first run and the
            # newest trusted root afterwards (what a device keeps between polls).
            bootstrap=None,
        )
        updater.refresh()
        for name in targets:
            info = updater.get_targetinfo(name)
            if info is None:
                raise LookupError(f"target {name} not found by ngclient")
            path = updater.download_target(info)
            with open(path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            print(json.dumps({
                "target": name,
                "length": info.length,
                "sha256": digest,
                "custom": info.custom,
                "path": path,
            }))
    except Exception as e:  # the test reads the class and message
        print(f"FAIL {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
