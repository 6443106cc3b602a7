"""Whether importing comfy.cli_args parses sys.argv.

Only main.py turns parsing on, as upstream does: a custom node or a script that imports
comfy.model_management gets the defaults instead of dying on argv it never meant for us."""

args_parsing = False


def enable_args_parsing(enable: bool = True) -> None:
    global args_parsing
    args_parsing = enable
