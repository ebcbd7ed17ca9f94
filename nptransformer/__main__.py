"""Command line: ``python -m nptransformer <command>`` (also the ``nptransformer`` script).

Commands are registered in :mod:`nptransformer.apps.cli`; ``--help`` lists them.

A user error (a bad argument, a missing or malformed file, a missing
optional package, a run that diverged) ends the program with one line on
stderr, ``nptransformer <command>: error: ...``, and exit status 1; the
traceback is printed only with ``--debug``. Anything else is a bug, and
keeps its traceback.
"""

from __future__ import annotations

import sys

from .apps.cli import build_parser

#: What a user can cause and fix: arguments, files, missing packages, numbers that went non-finite.
USER_ERRORS = (ValueError, TypeError, OSError, ImportError, FloatingPointError, KeyError)


def _is_user_error(error: BaseException) -> bool:
    from .training import TrainingDiverged  # here, not at the top: --help stays fast

    return isinstance(error, USER_ERRORS + (TrainingDiverged,))


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: sys.argv[1:]), run the command, return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except Exception as error:
        if args.debug or not _is_user_error(error):
            raise
        message = str(error) or type(error).__name__
        if isinstance(error, KeyError):
            message = f"missing entry {message}"
        print(f"nptransformer {args.command}: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"nptransformer {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
