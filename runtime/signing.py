"""Ed25519 signatures of engine directories (the `cryptography` package).

One signature covers a whole directory: it signs manifest.json byte for byte, and the manifest holds
the SHA-256 of every other file (checked by `runtime.manifest.read_manifest`). The signature lives
beside it in `manifest.sig` (JSON: format, algorithm, key id, base64 signature). Keys are PEM files
(`streamer keygen`): PKCS#8 private key (mode 0600) and SubjectPublicKeyInfo public key (KEY.pub);
an OpenSSH `ssh-ed25519` public key is accepted as a trust key too. Threat model: docs/SECURITY.md.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from pathlib import Path

from unitio.growing import create_new
from unitio.jsonsafe import loads_bounded

SIGNATURE = "manifest.sig"
FORMAT = "av-streamer-signature/1"
_CONTEXT = b"av-streamer-engines-signature/1\x00"  # domain separation: this signature means only this
_MAX_KEY_BYTES = 16_384
_MAX_SIGNATURE_BYTES = 4096  # the JSON holds a key id and 88 base64 characters


class SignatureError(ValueError):
    """A key that cannot be used, or an engine directory whose signature is missing or does not verify."""


def read_capped(path: Path, cap: int, what: str) -> bytes:
    """The bytes of the regular file `path`, refused (SignatureError naming it) when it is missing, not a
    regular file, or over `cap` bytes: the size is checked with fstat on the open file before reading,
    and at most cap + 1 bytes are ever read (a file growing meanwhile is refused too)."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)  # a FIFO does not block the open
    except FileNotFoundError:
        raise SignatureError(f"{path}: no such {what} file") from None
    except OSError as e:
        raise SignatureError(f"{path}: cannot open the {what} file: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SignatureError(f"{path}: expected a regular {what} file, got something else (a folder, FIFO "
                                 f"or device)")
        if st.st_size > cap:
            raise SignatureError(f"{path}: expected a {what} of at most {cap} bytes, got a file of {st.st_size} "
                                 f"bytes (not read)")
        data = os.read(fd, cap + 1)  # one read: a regular file gives what it holds, up to cap + 1
    finally:
        os.close(fd)
    if len(data) > cap:
        raise SignatureError(f"{path}: expected a {what} of at most {cap} bytes, got more")
    return data


def _read_key_file(path: Path, what: str) -> bytes:
    return read_capped(path, _MAX_KEY_BYTES, f"Ed25519 {what}")


def load_private_key(path: str | Path):
    """An Ed25519 private key from a PEM file (unencrypted PKCS#8, as `streamer keygen` writes it)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    data = _read_key_file(Path(path), "private key")
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise SignatureError(f"{path}: expected an unencrypted PEM Ed25519 private key, got an error: {e}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path}: expected an Ed25519 private key, got {type(key).__name__}")
    return key


def load_public_key(path: str | Path):
    """An Ed25519 public key from a PEM (SubjectPublicKeyInfo) or OpenSSH (`ssh-ed25519 ...`) file."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key, load_ssh_public_key

    data = _read_key_file(Path(path), "public key")
    try:
        key = load_ssh_public_key(data) if data.startswith(b"ssh-") else load_pem_public_key(data)
    except (ValueError, TypeError) as e:
        raise SignatureError(f"{path}: expected a PEM or OpenSSH Ed25519 public key, got an error: {e}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{path}: expected an Ed25519 public key, got {type(key).__name__}")
    return key


def key_id(public_key) -> str:
    """First 16 hex digits of the SHA-256 of the raw 32-byte public key: names a key in messages."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return hashlib.sha256(public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)).hexdigest()[:16]


def keygen(out: str | Path) -> tuple[Path, Path]:
    """Write a new Ed25519 key pair: `out` (private, PEM, mode 0600) and `out`.pub (public, PEM).
    Refuses to overwrite either file."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
        PublicFormat,
    )

    private, public = Path(out), Path(str(out) + ".pub")
    for p in (private, public):
        if p.exists() or p.is_symlink():
            raise SignatureError(f"{p}: already exists; expected a new file name (keys are never overwritten)")
    if not private.parent.is_dir():
        raise SignatureError(f"{private.parent}: expected an existing folder for the key files")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    with create_new(private, "wb", perms=0o600) as f:
        f.write(pem)
    with create_new(public, "wb") as f:  # new, never through a link planted after the check above
        f.write(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    return private, public


def sign_manifest(directory: str | Path, manifest_bytes: bytes, private_key_path: str | Path) -> str:
    """Sign `manifest_bytes` (the directory's manifest.json) with the key; writes manifest.sig, returns the key id."""
    key = load_private_key(private_key_path)
    kid = key_id(key.public_key())
    body = {"format": FORMAT, "algorithm": "ed25519", "key_id": kid,
            "signature": base64.b64encode(key.sign(_CONTEXT + manifest_bytes)).decode()}
    (Path(directory) / SIGNATURE).write_text(json.dumps(body, indent=1) + "\n")
    return kid


def verify_manifest(directory: str | Path, manifest_bytes: bytes, public_key_path: str | Path) -> str:
    """Check `directory`/manifest.sig over `manifest_bytes` with the trusted public key; returns its key id.
    Raises SignatureError naming the file: unsigned, malformed, another key, or a signature that fails."""
    from cryptography.exceptions import InvalidSignature

    key = load_public_key(public_key_path)
    kid, sig_path = key_id(key), Path(directory) / SIGNATURE
    if not sig_path.exists():
        raise SignatureError(f"{sig_path}: missing: expected an engine directory signed with {public_key_path} "
                             f"(key {kid}), got an unsigned one (sign it with `streamer build --sign KEY`)")
    raw = read_capped(sig_path, _MAX_SIGNATURE_BYTES, f"{FORMAT} signature")
    try:
        body = loads_bounded(raw, _MAX_SIGNATURE_BYTES, max_depth=4)
        ok = (isinstance(body, dict) and body.get("format") == FORMAT and body.get("algorithm") == "ed25519"
              and isinstance(body.get("key_id"), str) and isinstance(body.get("signature"), str))
        signature = base64.b64decode(body["signature"], validate=True) if ok else b""
    except (ValueError, UnicodeDecodeError):
        ok = False
    if not ok or len(signature) != 64:
        raise SignatureError(f"{sig_path}: expected a {FORMAT} file (JSON: format, algorithm ed25519, key_id, "
                             f"base64 signature of 64 bytes), got something else")
    if body["key_id"] != kid:
        raise SignatureError(f"{sig_path}: signed by key {body['key_id'][:16]!r}, expected key {kid} "
                             f"({public_key_path})")
    try:
        key.verify(signature, _CONTEXT + manifest_bytes)
    except InvalidSignature:
        raise SignatureError(f"{Path(directory) / 'manifest.json'}: the signature in {SIGNATURE} does not verify "
                             f"with {public_key_path} (key {kid}): the manifest was changed after signing") from None
    return kid
