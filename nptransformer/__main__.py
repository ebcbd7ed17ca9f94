"""Command line: ``python -m nptransformer <command>`` (also the ``nptransformer`` script).

Commands are registered in :mod:`nptransformer.apps.cli`; ``--help`` lists them.
"""

from __future__ import annotations

import sys

from .apps.cli import build_parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: sys.argv[1:]), run the command, return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
