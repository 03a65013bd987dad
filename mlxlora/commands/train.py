"""`mlxlora train` (placeholder until implemented)."""


def register(sub) -> None:
    p = sub.add_parser("train", help="train (not yet implemented)")
    p.set_defaults(func=lambda args: print("not yet implemented") or 1)
