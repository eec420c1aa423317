"""Compiles proto/sdedit/v1/sdedit.proto into the importable package sdedit.v1.

    python scripts/gen_proto.py [--out DIR]

Uses the pinned grpcio-tools (its protoc), so the output is reproducible; a test runs this
into a temporary folder and checks that the committed files match it byte for byte.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO = Path("sdedit/v1/sdedit.proto")
INIT = '"""Generated from proto/sdedit/v1/sdedit.proto by scripts/gen_proto.py; do not edit."""\n'


def generate(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    include = str(Path(protoc.__file__).parent / "_proto")  # the well-known types (google/protobuf/*)
    args = [
        "protoc",
        f"-I{ROOT / 'proto'}",  # sdedit/v1 and the google/rpc protos it imports (proto/google/README.md)
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        str(ROOT / "proto" / PROTO),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for package in (out / "sdedit", out / "sdedit" / "v1"):
        (package / "__init__.py").write_text(INIT)
    return sorted((out / "sdedit").rglob("*.py*"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT)
    args = parser.parse_args()
    for path in generate(args.out):
        print(path.relative_to(args.out))


if __name__ == "__main__":
    sys.exit(main())
