"""`python -m service.config --markdown` prints docs/settings.md (`make docs` writes it)."""

from __future__ import annotations

import argparse
import sys

from service.config.docs import markdown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.config", description=__doc__)
    parser.add_argument("--markdown", action="store_true", help="print docs/settings.md, made from the settings' declarations")
    args = parser.parse_args(argv)
    if not args.markdown:
        parser.error("say what to print: --markdown")
    sys.stdout.write(markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
