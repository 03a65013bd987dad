"""`mlxlora tui` (or `mlxlora` alone in a terminal): the full-screen studio."""

from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser(
        "tui",
        help="open the full-screen studio (also: mlxlora alone in a terminal)",
        description="The full-screen studio: datasets, new jobs, live runs, compare, "
        "playground and system, on number keys 1-6. Training runs in a background runner "
        "that outlives the app.",
    )
    p.add_argument(
        "--tab",
        choices=["datasets", "train", "runs", "compare", "playground", "system"],
        default="datasets",
        help="the tab to open on",
    )
    p.set_defaults(func=run)


def interactive() -> bool:
    """Whether a person is at a terminal (so `mlxlora` alone opens the app, not the help)."""
    return sys.stdin.isatty() and sys.stdout.isatty()


def run(args) -> int:
    from mlxlora.tui.app import run as run_app

    return run_app(args.tab)
