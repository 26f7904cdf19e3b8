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
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["keygen"]:
        return keygen(args[1:])
    if args[:1] == ["check"]:
        from dnsd import check  # the delegation doctor: same options as the server

        return check.main(args[1:])
    try:
        config = config_module.load(args)
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


def keygen(argv: Sequence[str]) -> int:
    """`dnsd keygen ZONE [--algorithm ecdsap256sha256|ed25519] [--dir DIR]`: write a CSK, print DS and DNSKEY.

    The DS (digest type 2) is what goes to the parent; the files are BIND's format, so `--dnssec-keys`
    reads them exactly as it reads keys made by `dnssec-keygen`.
    """
    import argparse

    from dnsd.dnssec import keys

    parser = argparse.ArgumentParser(prog="dnsd keygen", description="write a DNSSEC signing key (CSK)")
    parser.add_argument("zone")
    parser.add_argument("--algorithm", default="ecdsap256sha256", choices=sorted(keys.ALGORITHMS_BY_NAME))
    parser.add_argument("--dir", default=".")
    options = parser.parse_args(list(argv))
    try:
        key = keys.generate(options.zone, keys.ALGORITHMS_BY_NAME[options.algorithm])
        base = keys.write(key, options.dir)
    except (OSError, keys.KeyError_) as exc:
        print(f"dnsd keygen: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"; {base}.key, {base}.private", file=sys.stderr)
    print(key.ds_text())
    print(key.dnskey_text())
    return 0
