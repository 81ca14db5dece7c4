"""The ``cmpmodel`` command (training, evaluation and export arrive with the model)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cmpmodel import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cmpmodel", description="Train and evaluate Conditional Motion Propagation models."
    )
    parser.add_argument("--version", action="version", version=f"cmpmodel {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    build_parser().parse_args(argv)
    print("cmpmodel: no commands yet; see README.md", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
