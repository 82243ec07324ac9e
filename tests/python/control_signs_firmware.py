"""Test-only attack: a stolen rollout-control key signs a firmware target.

Adds TARGET_NAME (the bytes of IMAGE, with the OTA release fields CUSTOM_JSON) to the newest
`rollout-control` metadata of the repository at REPO, signs it with the rollout-control key, and
publishes it with a re-signed snapshot and timestamp (the online keys the attacker may hold too), in
the repository's own layout (consistent snapshots, content-addressed targets). What the attacker
cannot do is re-sign top-level targets, whose delegation keeps the role to `rollouts/*/*.json`.

usage: control_signs_firmware.py REPO CONTROL_PK8 SNAPSHOT_PK8 TIMESTAMP_PK8 TARGET_NAME IMAGE CUSTOM_JSON
"""

import hashlib
import json
import os
import sys

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import load_der_private_key
from securesystemslib.signer import CryptoSigner, SSlibKey
from tuf.api.metadata import Metadata, MetaFile, TargetFile
from tuf.api.serialization.json import JSONSerializer


def newest(meta_dir, role):
    versions = [
        int(name.split(".", 1)[0])
        for name in os.listdir(meta_dir)
        if name.endswith(f".{role}.json") and name.split(".", 1)[0].isdigit()
    ]
    return max(versions)


def signer(pk8_path, keys):
    """A signer for the private key in pk8_path, with the key id the repository gave its public key."""
    with open(pk8_path, "rb") as f:
        private = load_der_private_key(f.read(), None)
    public_hex = (
        private.public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        .hex()
    )
    for keyid, key in keys.items():
        if key.keyval.get("public") == public_hex:
            return CryptoSigner(private, SSlibKey(keyid, key.keytype, key.scheme, key.keyval))
    sys.exit(f"{pk8_path}: not a key of this repository")


def write(meta_dir, name, md):
    with open(os.path.join(meta_dir, name), "wb") as f:
        f.write(md.to_bytes(JSONSerializer(compact=False)))


def main():
    repo, control_pk8, snapshot_pk8, timestamp_pk8, target_name, image, custom = sys.argv[1:8]
    meta_dir = os.path.join(repo, "metadata")
    root = Metadata.from_file(os.path.join(meta_dir, f"{newest(meta_dir, 'root')}.root.json"))
    targets = Metadata.from_file(os.path.join(meta_dir, f"{newest(meta_dir, 'targets')}.targets.json"))
    control_version = newest(meta_dir, "rollout-control")
    control = Metadata.from_file(os.path.join(meta_dir, f"{control_version}.rollout-control.json"))

    # The firmware image, content-addressed as the repository stores targets.
    with open(image, "rb") as f:
        data = f.read()
    digest = hashlib.sha256(data).hexdigest()
    directory, _, base = target_name.rpartition("/")
    path = os.path.join(repo, "targets", directory, f"{digest}.{base}")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    control.signed.targets[target_name] = TargetFile(
        len(data), {"sha256": digest}, target_name, unrecognized_fields={"custom": json.loads(custom)}
    )
    control.signed.version += 1
    control.signatures.clear()
    control.sign(signer(control_pk8, targets.signed.delegations.keys))
    control_bytes = control.to_bytes(JSONSerializer(compact=False))
    write(meta_dir, f"{control.signed.version}.rollout-control.json", control)

    snapshot = Metadata.from_file(os.path.join(meta_dir, f"{newest(meta_dir, 'snapshot')}.snapshot.json"))
    snapshot.signed.meta["rollout-control.json"] = MetaFile(
        control.signed.version,
        len(control_bytes),
        {"sha256": hashlib.sha256(control_bytes).hexdigest()},
    )
    snapshot.signed.version += 1
    snapshot.signatures.clear()
    snapshot.sign(signer(snapshot_pk8, root.signed.keys))
    write(meta_dir, f"{snapshot.signed.version}.snapshot.json", snapshot)
    snapshot_bytes = snapshot.to_bytes(JSONSerializer(compact=False))

    timestamp = Metadata.from_file(os.path.join(meta_dir, "timestamp.json"))
    timestamp.signed.snapshot_meta = MetaFile(
        snapshot.signed.version,
        len(snapshot_bytes),
        {"sha256": hashlib.sha256(snapshot_bytes).hexdigest()},
    )
    timestamp.signed.version += 1
    timestamp.signatures.clear()
    timestamp.sign(signer(timestamp_pk8, root.signed.keys))
    write(meta_dir, "timestamp.json", timestamp)


if __name__ == "__main__":
    main()
