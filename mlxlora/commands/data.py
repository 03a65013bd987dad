"""`mlxlora data` (placeholder until implemented)."""


def register(sub) -> None:
    p = sub.add_parser("data", help="data (not yet implemented)")
    p.set_defaults(func=lambda args: print("not yet implemented") or 1)
