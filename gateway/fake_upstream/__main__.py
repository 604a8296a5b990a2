"""``python -m gateway.fake_upstream --port N [--host H]``."""
from __future__ import annotations

import argparse

from . import run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gateway.fake_upstream", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090, help="0 picks a free port (printed on stdout)")
    args = parser.parse_args(argv)
    run(args.host, args.port)


if __name__ == "__main__":
    main()
