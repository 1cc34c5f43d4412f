"""Signed engine directories on the command line: `streamer keygen`, `build --sign KEY`, and the
`--trust PUBKEY` check every command that loads engines makes first (runtime/signing.py, docs/SECURITY.md)."""
from __future__ import annotations

import argparse
from pathlib import Path

from .outputs import check_out_file, console


def add_keygen_command(sub) -> None:
    keygen = sub.add_parser("keygen", help="make an Ed25519 key pair for signing engine directories")
    keygen.add_argument("--out", type=Path, required=True, help="private key file to write (KEY; KEY.pub beside it)")
    keygen.set_defaults(func=cmd_keygen)


def cmd_keygen(args: argparse.Namespace) -> int:
    """`streamer keygen --out KEY`: KEY (private, PEM, mode 0600) and KEY.pub; never overwrites."""
    from runtime.signing import key_id, keygen, load_public_key

    private, public = keygen(args.out)
    console.print(f"wrote {private} (private: keep it secret; sign with `streamer build --sign {private}`) and "
                  f"{public} (public, key {key_id(load_public_key(public))}: `--trust {public}`)")
    return 0


def trusted(args: argparse.Namespace) -> None:
    """With --trust: the engine directory's signature is checked now, before anything of it is loaded."""
    if getattr(args, "trust", None) is not None:
        from runtime.manifest import read_manifest

        read_manifest(args.engines, trust=args.trust)


def check_key_first(args: argparse.Namespace) -> None:
    """`build --sign KEY`: a key that cannot sign fails before minutes of export."""
    if getattr(args, "sign", None) is not None:
        from runtime.signing import load_private_key

        load_private_key(args.sign)


def sign_if_asked(args: argparse.Namespace) -> int:
    """`build --sign KEY`: sign the directory just built (manifest.sig) -> exit code 0."""
    if getattr(args, "sign", None) is not None:
        from runtime.manifest import sign_directory

        console.print(f"signed {args.out} with key {sign_directory(args.out, args.sign)} ({args.sign})")
    return 0


def check_bench_outputs(args: argparse.Namespace) -> None:
    """bench/profile: their output files are checked, and the engines' signature (--trust), before any run."""
    for name in ("json", "timeline", "out"):
        check_out_file(getattr(args, name, None), f"--{name}")
    trusted(args)
