"""Command line entry point: `dnsd [OPTIONS]` and `python -m dnsd`.

Exit status: 0 after a clean shutdown, 2 for a configuration error (one line naming the key),
3 when start-up fails for another reason (a port in use, an unreadable manifests file).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence

from dnsd import config as config_module
from dnsd import log
from dnsd.errors import ConfigError, StartupError

EXIT_CONFIG = 2
EXIT_STARTUP = 3


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the configuration, run the server, and map failures to one line and an exit status."""
    try:
        config = config_module.load(sys.argv[1:] if argv is None else argv)
    except ConfigError as exc:
        print(f"dnsd: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    log.setup(config.log_level, config.log_format)
    from dnsd.app import serve  # keeps --version and config errors fast

    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        return int(runner(serve(config)))
    except StartupError as exc:
        logging.getLogger("dnsd").error("start-up failed: %s", exc)
        return EXIT_STARTUP
    except KeyboardInterrupt:
        return 0
