"""The ``timesclip-darts`` command: the model's commands (demo, train, predict, backtest) and the
deployment's (export, stream, keygen, serve) under one parser. User errors print one line and
exit 1 (2 for options that can never work, such as quantiles a model cannot give); no
tracebacks."""

from __future__ import annotations

import argparse
import os
import sys
import time

from timesclip_cli import bundle_commands, model_commands
from timesclip_cli.errors import UsageError
from timesclip_darts.likelihoods import QuantileError
from timesclip_darts.quiet import quiet_lightning

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="timesclip-darts",
        description="TimesCLIP forecasting with Darts: train, predict, backtest, demo; export, "
        "stream and serve bundles.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    model_commands.add_commands(commands)
    bundle_commands.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    try:
        # The command's tables would drown in Lightning's messages (the demo's Darts baselines
        # fit outside TimesCLIPModel's own quieting).
        with quiet_lightning():
            return args.func(args)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        # Options that can never work (quantiles a model cannot give) exit 2, as argparse's do.
        return 2 if isinstance(err, (QuantileError, UsageError)) else 1
    except KeyboardInterrupt:
        print(f"interrupted after {time.perf_counter() - started:.0f} s", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
