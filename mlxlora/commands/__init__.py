"""Subcommands of the `mlxlora` CLI: each module has `register(subparsers)`."""


def actions(parser, dest: str):
    """The ACTION subparsers of a command group: the group alone prints its help (its actions
    and what each does) rather than argparse's 'the following arguments are required'."""
    parser.set_defaults(func=lambda args: parser.print_help() or 0)
    return parser.add_subparsers(dest=dest, metavar="ACTION")
