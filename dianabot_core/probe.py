"""``python -m dianabot_core.probe [URL]``: exit 0 when URL answers 200, else 1 with one line saying why.

The container health check of the image (Dockerfile ``HEALTHCHECK``) and of docker-compose.yml:
``/readyz`` of the consumers (9464, the default URL) or of a scheduler replica (9465), and the Bot
API double's ``/_double/health``. Standard library only, so a probe every few seconds costs a few
milliseconds: no settings, no database or Kafka driver is imported.
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence

DEFAULT_URL = "http://127.0.0.1:9464/readyz"


def probe(url: str, timeout_s: float) -> str | None:
    """None when ``url`` answers 200 within ``timeout_s``; otherwise why not, in one line."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            status = int(response.status)
            if status == 200:
                return None
            return f"{url} answered {status}"
    except urllib.error.HTTPError as error:  # 503 from /readyz names the failing checks in its body
        body = " ".join(error.read(300).decode("utf-8", "replace").split())
        return f"{url} answered {error.code}: {body}"
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        return f"{url} unreachable: {reason}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dianabot_core.probe", description="HTTP health probe.")
    parser.add_argument("url", nargs="?", default=DEFAULT_URL, help=f"default: {DEFAULT_URL}")
    parser.add_argument("--timeout", type=float, default=4.0, help="seconds (default 4)")
    args = parser.parse_args(argv)
    problem = probe(args.url, args.timeout)
    if problem is not None:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
