"""`mlxlora runs` (placeholder until implemented)."""


def register(sub) -> None:
    p = sub.add_parser("runs", help="runs (not yet implemented)")
    p.set_defaults(func=lambda args: print("not yet implemented") or 1)
