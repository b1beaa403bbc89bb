"""What every stage script shares: argument parsing with --params, stderr logging, and a
clean exit with the message (not a traceback) for errors the user must fix."""
from __future__ import annotations

import argparse
import functools
import logging
import sys
from typing import Callable

from pipeline.config import ParamsError
from pipeline.errors import EncoderWeightsError


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return p


def stage_main(fn: Callable[[], None]) -> Callable[[], None]:
    @functools.wraps(fn)
    def run() -> None:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
        try:
            fn()
        except (ParamsError, FileNotFoundError, ValueError, EncoderWeightsError) as err:
            logging.getLogger(fn.__module__).error("%s", err)
            sys.exit(f"error: {err}")
    return run
