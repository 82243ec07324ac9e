#!/usr/bin/env python3
"""Builds TUF repositories with python-tuf's Metadata API for ota-tuf's tests and benchmark.

TEST-ONLY: every key is generated fresh in memory and thrown away; nothing here signs anything real.

    make_repo.py full OUT [--no-consistent]   root rotations (ed25519/ecdsa/rsa-pss keys, threshold change,
                                              timestamp key rotation), nested (rsa-pkcs1v15 key), terminating, hash-prefix and
                                              succinct hash-bin delegations, targets in subdirectories
    make_repo.py attacks OUT                  states v1/, v2/, samever/, expired/, revoked/ of one repository
    make_repo.py bench OUT N                  one top-level targets role with N targets
    make_repo.py diamond OUT                  `targets` delegates to `a` and `b`, both delegate to `release`
                                              with their own key and paths; `release` is signed by `a`'s key
                                              only and lists a/fw.bin and b/fw.bin

Each writes OUT/initial_root.json (what a device is provisioned with) and served trees containing
metadata/ and targets/. `full` also writes OUT/expect.json: {"found": {path: sha256}, "absent": [path]}.
"""

import copy
import hashlib
import json
import os
import shutil
import sys
from datetime import datetime, timedelta, timezone

from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    SuccinctRoles,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

FUTURE = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=365)
PAST = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=1)
SER = JSONSerializer(compact=False)


class Repo:
    """A repository in memory: top-level and delegated roles, their signers, target contents."""

    def __init__(self, consistent=True, keytypes=None):
        keytypes = keytypes or {}
        self.consistent = consistent
        self.signers = {}
        self.roles = {}
        self.target_data = []  # (path, bytes)
        self.delegators = {}  # delegated role -> delegating role
        root = Root(expires=FUTURE, consistent_snapshot=consistent)
        for role in ["root", "timestamp", "snapshot", "targets"]:
            signer = generate(keytypes.get(role, "ed25519"))
            root.add_key(signer.public_key, role)
            self.signers[role] = [signer]
        self.roles["root"] = Metadata(root)
        self.roles["timestamp"] = Metadata(Timestamp(expires=FUTURE))
        self.roles["snapshot"] = Metadata(Snapshot(expires=FUTURE))
        self.roles["targets"] = Metadata(Targets(expires=FUTURE))
        self.root_history = []
        self.published = False

    def sign(self, role):
        md = self.roles[role]
        md.signatures.clear()
        for signer in self.signers[role]:
            md.sign(signer, append=True)

    def publish_root(self):
        self.sign("root")
        self.root_history.append(self.roles["root"].to_bytes(SER))

    def add_target(self, role, path, data):
        self.target_data.append((path, data))
        tf = TargetFile.from_data(path, data, ["sha256", "sha512"])
        self.roles[role].signed.targets[path] = tf

    def delegate(self, parent, name, paths=None, prefixes=None, terminating=False, keytype="ed25519"):
        signer = generate(keytype)
        parent_md = self.roles[parent].signed
        if parent_md.delegations is None:
            parent_md.delegations = Delegations(keys={}, roles={})
        parent_md.delegations.keys[signer.public_key.keyid] = signer.public_key
        parent_md.delegations.roles[name] = DelegatedRole(
            name, [signer.public_key.keyid], 1, terminating, paths, prefixes
        )
        self.roles[name] = Metadata(Targets(expires=FUTURE))
        self.signers[name] = [signer]
        self.delegators[name] = parent

    def delegate_succinct(self, parent, bit_length, prefix):
        signer = generate("ed25519")
        succinct = SuccinctRoles([signer.public_key.keyid], 1, bit_length, prefix)
        self.roles[parent].signed.delegations = Delegations(
            keys={signer.public_key.keyid: signer.public_key}, roles=None, succinct_roles=succinct
        )
        for name in succinct.get_roles():
            self.roles[name] = Metadata(Targets(expires=FUTURE))
            self.signers[name] = [signer]
            self.delegators[name] = parent
        return succinct

    def write(self, out, bump=True, timestamp_expires=None, timestamp_signers=None):
        """Writes a complete served tree into out/ (metadata/ and targets/)."""
        meta_dir = os.path.join(out, "metadata")
        tgt_dir = os.path.join(out, "targets")
        os.makedirs(meta_dir, exist_ok=True)
        os.makedirs(tgt_dir, exist_ok=True)
        for i, data in enumerate(self.root_history, start=1):
            write(os.path.join(meta_dir, f"{i}.root.json"), data)
        if self.root_history:
            write(os.path.join(meta_dir, "root.json"), self.root_history[-1])
        snapshot = self.roles["snapshot"].signed
        bump = bump and self.published
        self.published = True
        for name, md in self.roles.items():
            if name in ("root", "timestamp", "snapshot"):
                continue
            if bump:
                md.signed.version += 1
            self.sign(name)
            data = md.to_bytes(SER)
            snapshot.meta[f"{name}.json"] = MetaFile(md.signed.version)
            quoted = name.replace("/", "%2F")
            if self.consistent:
                write(os.path.join(meta_dir, f"{md.signed.version}.{quoted}.json"), data)
            write(os.path.join(meta_dir, f"{quoted}.json"), data)
        if bump:
            snapshot.version += 1
        self.sign("snapshot")
        snap_bytes = self.roles["snapshot"].to_bytes(SER)
        if self.consistent:
            write(os.path.join(meta_dir, f"{snapshot.version}.snapshot.json"), snap_bytes)
        write(os.path.join(meta_dir, "snapshot.json"), snap_bytes)
        ts = self.roles["timestamp"]
        if bump:
            ts.signed.version += 1
        ts.signed.snapshot_meta = MetaFile(snapshot.version, len(snap_bytes), {"sha256": hashlib.sha256(snap_bytes).hexdigest()})
        ts.signed.expires = timestamp_expires or FUTURE
        ts.signatures.clear()
        for signer in timestamp_signers or self.signers["timestamp"]:
            ts.sign(signer, append=True)
        write(os.path.join(meta_dir, "timestamp.json"), ts.to_bytes(SER))
        # Reversed: without consistent snapshots one path holds one file, and the first role's wins.
        for path, data in reversed(self.target_data):
            d, _, base = path.rpartition("/")
            if self.consistent:
                digest = hashlib.sha256(data).hexdigest()
                name = f"{d}/{digest}.{base}" if d else f"{digest}.{base}"
            else:
                name = path
            write(os.path.join(tgt_dir, name), data)


def generate(keytype):
    if keytype == "ecdsa":
        return CryptoSigner.generate_ecdsa()
    if keytype == "rsa":
        return CryptoSigner.generate_rsa()
    if keytype == "rsa-pkcs1":
        return CryptoSigner.generate_rsa(scheme="rsa-pkcs1v15-sha256")
    return CryptoSigner.generate_ed25519()


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def full(out, consistent):
    repo = Repo(consistent, {"timestamp": "ecdsa", "snapshot": "rsa", "targets": "ed25519"})
    repo.publish_root()
    initial_root = repo.root_history[0]

    # Root v2: a second root key, threshold 2; signed by the old key and both new ones.
    root = repo.roles["root"].signed
    second = CryptoSigner.generate_ecdsa()
    root.add_key(second.public_key, "root")
    root.roles["root"].threshold = 2
    root.version = 2
    repo.signers["root"].append(second)
    repo.publish_root()
    # Root v3: timestamp key rotated to an RSA key.
    old_ts = repo.signers["timestamp"][0]
    root.revoke_key(old_ts.public_key.keyid, "timestamp")
    new_ts = CryptoSigner.generate_rsa()
    root.add_key(new_ts.public_key, "timestamp")
    repo.signers["timestamp"] = [new_ts]
    root.version = 3
    repo.publish_root()

    found, absent = {}, []

    def add(role, path, text):
        data = text.encode()
        repo.add_target(role, path, data)
        found[path] = hashlib.sha256(data).hexdigest()

    add("targets", "top.txt", "top-level target\n")
    add("targets", "dir/sub/file.bin", "in a subdirectory\n")
    repo.delegate("targets", "a", paths=["a/*", "a/*/*"], keytype="ecdsa")
    add("a", "a/one.txt", "from role a\n")
    repo.delegate("a", "a-nested", paths=["a/deep/*"], keytype="rsa-pkcs1")
    add("a-nested", "a/deep/x.txt", "nested delegation\n")
    repo.delegate("targets", "t", paths=["t/*"], terminating=True)
    add("t", "t/real.txt", "from terminating role t\n")
    repo.delegate("targets", "t-after", paths=["t/*"])
    repo.add_target("t-after", "t/real.txt", b"shadowed: must never be returned\n")
    repo.add_target("t-after", "t/only-after.txt", b"unreachable behind a terminating delegation\n")
    absent.append("t/only-after.txt")
    prefix = hashlib.sha256(b"hp/file.txt").hexdigest()[:2]
    repo.delegate("targets", "hp", prefixes=[prefix])
    add("hp", "hp/file.txt", "found through a path hash prefix\n")
    repo.delegate("targets", "bins-parent", paths=["bins/*"])
    succinct = repo.delegate_succinct("bins-parent", 4, "bin")
    for i in range(6):
        path = f"bins/f{i}"
        add(succinct.get_role_for_target(path), path, f"hash-binned {i}\n")
    repo.delegate("targets", "star", paths=["*"])
    repo.add_target("star", "nested/unreachable.txt", b"* must not cross /\n")
    absent.append("nested/unreachable.txt")
    add("star", "flat.txt", "* matches one segment\n")
    absent.append("missing/everywhere.txt")

    repo.write(os.path.join(out, "repo"), bump=False)
    write(os.path.join(out, "initial_root.json"), initial_root)
    write(os.path.join(out, "expect.json"), json.dumps({"found": found, "absent": absent}, indent=1).encode())


def attacks(out):
    repo = Repo(True)
    repo.publish_root()
    write(os.path.join(out, "initial_root.json"), repo.root_history[0])
    repo.add_target("targets", "fw/image.bin", b"firmware v1\n" * 100)
    repo.write(os.path.join(out, "v1"), bump=False)
    repo.add_target("targets", "fw/image.bin", b"firmware v2\n" * 100)
    repo.write(os.path.join(out, "v2"), bump=True)
    # Timestamp with v2's version but other content (a later expiry), validly signed.
    same = copy.deepcopy(repo)
    same.write(os.path.join(out, "samever"), bump=False, timestamp_expires=FUTURE + timedelta(days=1))
    # Same content as v2 plus a newer timestamp that has expired (freeze attack: a valid but stale view).
    frozen = copy.deepcopy(repo)
    frozen.write(os.path.join(out, "expired"), bump=True, timestamp_expires=PAST)
    # Root v2 revokes the timestamp key; timestamp v3 is still signed with the revoked key.
    revoked = copy.deepcopy(repo)
    old_ts = revoked.signers["timestamp"][0]
    root = revoked.roles["root"].signed
    root.revoke_key(old_ts.public_key.keyid, "timestamp")
    new_ts = CryptoSigner.generate_ed25519()
    root.add_key(new_ts.public_key, "timestamp")
    root.version = 2
    revoked.signers["timestamp"] = [new_ts]
    revoked.publish_root()
    revoked.write(os.path.join(out, "revoked"), bump=True, timestamp_signers=[old_ts])


def bench(out, n):
    repo = Repo(True)
    repo.publish_root()
    write(os.path.join(out, "initial_root.json"), repo.root_history[0])
    for i in range(n):
        path = f"fw/board-{i % 50}/image-{i}.bin"
        data = f"target {i}\n".encode()
        repo.roles["targets"].signed.targets[path] = TargetFile.from_data(path, data, ["sha256"])
        if i == 0:
            repo.target_data.append((path, data))
    repo.write(os.path.join(out, "repo"), bump=False)


def diamond(out):
    repo = Repo(True)
    repo.publish_root()
    write(os.path.join(out, "initial_root.json"), repo.root_history[0])
    repo.delegate("targets", "a", paths=["*/*"])
    repo.delegate("targets", "b", paths=["*/*"])
    via_a, via_b = generate("ed25519"), generate("ecdsa")
    for parent, signer, paths in [("a", via_a, ["a/*"]), ("b", via_b, ["b/*"])]:
        md = repo.roles[parent].signed
        md.delegations = Delegations(keys={signer.public_key.keyid: signer.public_key}, roles={})
        md.delegations.roles["release"] = DelegatedRole("release", [signer.public_key.keyid], 1, False, paths)
    repo.roles["release"] = Metadata(Targets(expires=FUTURE))
    repo.signers["release"] = [via_a]
    repo.add_target("release", "a/fw.bin", b"authorised through a\n")
    repo.add_target("release", "b/fw.bin", b"b never signed this\n")
    repo.write(os.path.join(out, "repo"), bump=False)


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    cmd, out = sys.argv[1], sys.argv[2]
    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(out)
    if cmd == "full":
        full(out, "--no-consistent" not in sys.argv)
    elif cmd == "attacks":
        attacks(out)
    elif cmd == "bench":
        bench(out, int(sys.argv[3]))
    elif cmd == "diamond":
        diamond(out)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
