"""`python -m webhook audit verify FILE [--public-key PEM]` and `audit keygen`."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .audit_verify import verify


def add_parser(sub) -> None:
    audit = sub.add_parser("audit", help="check the issuer's audit chain; make its checkpoint key")
    actions = audit.add_subparsers(dest="action", required=True)
    check = actions.add_parser("verify", help="check every replica's chain (and with --public-key its signed "
                               "checkpoints)")
    check.add_argument("file", type=Path)
    check.add_argument("--public-key", type=Path, help="the audit key's public half (PEM), kept off the cluster")
    keygen = actions.add_parser("keygen", help="an Ed25519 key pair for signed checkpoints")
    keygen.add_argument("--private-key", type=Path, required=True, help="written 0600: goes into the issuer's "
                        "Secret (issuer.auditKeySecret), nowhere else")
    keygen.add_argument("--public-key", type=Path, required=True, help="keep it where the auditors are")


def run(args: argparse.Namespace) -> int:
    return _keygen(args) if args.action == "keygen" else _verify(args)


def _keygen(args: argparse.Namespace) -> int:
    key = Ed25519PrivateKey.generate()
    try:
        fd = os.open(args.private_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as e:
        print(f"error: {args.private_key}: {e.strerror} (an existing key is never overwritten)", file=sys.stderr)
        return 2
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    args.public_key.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                              serialization.PublicFormat.SubjectPublicKeyInfo))
    print(f"wrote {args.private_key} (private, 0600) and {args.public_key} (public)")
    return 0


def _public_key(path: Path) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(path.read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path}: not an Ed25519 public key")
    return key


def _verify(args: argparse.Namespace) -> int:
    try:
        data = args.file.read_bytes()
        public = _public_key(args.public_key) if args.public_key is not None else None
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report = verify(data, public)
    for p in report.problems:
        print(p)
    for replica, n in sorted(report.unconfirmed.items()):
        print(f"replica {replica}: {n} records after its last signed checkpoint (unconfirmed)")
    state = "chain intact" if not report.problems else f"{len(report.problems)} problems"
    signed = ", checkpoints verified" if public is not None and not report.problems else ""
    print(f"{report.count} records, {state}{signed}")
    if public is None:
        print("(no --public-key: the chain alone cannot show a rewrite that recomputed it)")
    return 1 if report.problems else 0
