"""The `dysco` command line: one entry point, a subcommand per job."""

from __future__ import annotations

import argparse
import sys

from .demo.app import add_app_parser
from .demo.driver import add_demo_parser
from .k8s.cli import add_agent_parser
from .lab.cli import add_bench_parser, add_chain_parser, add_lab_parser
from .sim.cli import add_sim_parser
from .sim.fuzz import add_fuzz_parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dysco",
        description="Dysco for Kubernetes: insert, remove and replace middleboxes inside "
        "live TCP sessions.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_sim_parser(sub)
    add_fuzz_parser(sub)
    add_lab_parser(sub)
    add_bench_parser(sub)
    add_chain_parser(sub)
    add_agent_parser(sub)
    add_app_parser(sub)
    add_demo_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
