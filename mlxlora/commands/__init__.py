"""Subcommands of the `mlxlora` CLI: each module has `register(subparsers)`."""
