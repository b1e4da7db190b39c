"""`python -m dianabot_double --port 8081`: the Bot API double as a process.

Prints one `listening on <url>` line once it serves (port 0 picks a free port, so read that line);
SIGINT or SIGTERM stops it with exit status 0.  The required token, if any, is best passed in
TELEGRAM_DOUBLE_TOKEN rather than --token, which other users can see in the process list.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from collections.abc import Sequence

from dianabot_double.limits import RateLimit
from dianabot_double.server import TelegramDouble


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m dianabot_double", description="A local Telegram Bot API double."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081, help="0 picks a free port (default 8081)")
    parser.add_argument(
        "--token",
        default=os.environ.get("TELEGRAM_DOUBLE_TOKEN"),
        help="answer 401 to any other token (default: $TELEGRAM_DOUBLE_TOKEN; unset accepts any)",
    )
    parser.add_argument("--global-limit", type=int, default=30, help="messages/s per bot; 0 disables")
    parser.add_argument(
        "--private-limit", type=int, default=1, help="messages/s per private chat; 0 disables"
    )
    parser.add_argument(
        "--group-limit", type=int, default=20, help="messages/min per group or channel; 0 disables"
    )
    parser.add_argument("--no-limits", action="store_true", help="disable all three limits")
    parser.add_argument(
        "--no-enforce-retry-after",
        action="store_true",
        help="still count early retries, but do not refuse them once the window has room",
    )
    parser.add_argument("--bot-username", default="dianabot_double")
    parser.add_argument("--log-level", default="INFO", help="DEBUG logs one line per request")
    return parser.parse_args(argv)


def _limit(count: int, window_s: float, disabled: bool) -> RateLimit | None:
    return None if disabled or count <= 0 else RateLimit(count, window_s)


def build_double(args: argparse.Namespace) -> TelegramDouble:
    return TelegramDouble(
        token=args.token or None,
        global_limit=_limit(args.global_limit, 1.0, args.no_limits),
        private_chat_limit=_limit(args.private_limit, 1.0, args.no_limits),
        group_limit=_limit(args.group_limit, 60.0, args.no_limits),
        enforce_retry_after=not args.no_enforce_retry_after,
        bot_username=args.bot_username,
    )


async def serve(args: argparse.Namespace) -> None:
    double = build_double(args)
    url = await double.start(args.host, args.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    logging.getLogger("dianabot_double").info(
        "limits %s, token %s", double.limiter.limits_json(), "required" if args.token else "not checked"
    )
    print(f"telegram double listening on {url}", flush=True)
    try:
        await stop.wait()
    finally:
        await double.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
