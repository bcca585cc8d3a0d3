"""The `cerebrum` command line (also `python -m cerebrum`).

Each verb is a small function registered in `COMMANDS`: it adds its own sub-parser and returns
the handler to run. User errors (`ValueError`, `TypeError`, missing files) print one line to
stderr and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from cerebrum import __version__


def _add_demo(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the library's main jobs on real data that ships with scikit-learn",
        description="Fit Gaussian mixtures to scikit-learn's digits, choose K by BIC and "
        "compare the clusters with the true labels.",
    )
    parser.set_defaults(handler=_run_demo)


def _run_demo(args) -> int:
    from cerebrum import demo

    demo.run()
    return 0


#: Verbs in the order `--help` lists them; later issues add fit, score, train, generate, ...
COMMANDS = [_add_demo]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cerebrum",
        description="Mixture, state-space and hybrid neural models: fit, score, sample, train.",
    )
    parser.add_argument("--version", action="version", version=f"cerebrum {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add_command in COMMANDS:
        add_command(subparsers)
    return parser


def main(argv=None) -> int:
    """Entry point of the console script; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.handler(args)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as err:
        print(f"cerebrum {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cerebrum {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
