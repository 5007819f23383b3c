"""``python -m dysco.k8s agent ...``: the same as ``dysco agent ...`` (used by the image)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .cli import add_agent_parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dysco")
    sub = parser.add_subparsers(dest="command", required=True)
    add_agent_parser(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
