"""How much the command says: `--quiet` (errors only), default (the report, warnings), `--verbose` (per-op detail).

The library logs to the standard `logging` logger "mlopt" and never prints: a script using mlopt routes it like
any other library's messages. The command line attaches one stderr handler to that logger for the duration of a
run: warnings by default, debug detail (every chain's ops and what replaced them) with `--verbose`, errors only
with `--quiet`, which also leaves out the human report on stdout (`--json` output is still printed).
"""

import logging
import sys
from contextlib import contextmanager

LOGGER = "mlopt"


def add_verbosity(parser):
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    group.add_argument("-v", "--verbose", action="store_true", help="print per-op detail (logging level DEBUG)")


@contextmanager
def logging_to_stderr(args):
    """The "mlopt" logger's messages on stderr at the level the flags ask for, while the command runs."""
    level = logging.ERROR if getattr(args, "quiet", False) else logging.DEBUG if getattr(args, "verbose", False) else logging.WARNING
    logger = logging.getLogger(LOGGER)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("mlopt: %(levelname_lower)s: %(message)s"))
    handler.addFilter(_lower_level_name)
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


def _lower_level_name(record):
    from ..report import printable

    record.levelname_lower = record.levelname.lower()
    record.msg, record.args = printable(record.getMessage()), None  # one line, whatever names the model holds
    return True
