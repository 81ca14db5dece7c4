"""What the two commands (``cmpdata``, ``cmpmodel``) share: a parser whose ``--help`` shows the
defaults, the one reader of YAML option files, and the mapping of errors to exit codes.

Exit codes: 0 done; 1 the work ran but failed or is partial (a :class:`CmpDataError`: damaged
data, a failed write; what was finished is kept); 2 nothing was done (a
:class:`~cmpdata.errors.UsageError`: a bad option or an unusable path). Each is one line on
stderr. Any other error is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cmpdata.errors import CmpDataError, UsageError

_NO_DEFAULT = (None, False, argparse.SUPPRESS)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows each option's default, unless it has none or its text says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if not text or "default" in text or any(action.default is v for v in _NO_DEFAULT):
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose ``--help`` shows the defaults, with sub-commands that are
    :class:`Parser` s too, kept by name in :attr:`subcommands`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(formatter_class=HelpFormatter, **kwargs)
        self.subcommands: dict[str, Parser] = {}
        self._commands: Any = None

    def command(self, name: str, group: str = "command", **kwargs: Any) -> Parser:
        """Add the sub-command ``name`` (``kwargs``: ``add_parser``'s) and return its parser.
        ``group`` names the sub-commands in the parsed arguments and the usage (the first
        call decides it)."""
        if self._commands is None:
            self._commands = self.add_subparsers(
                dest=group, required=True, metavar=group.upper(), parser_class=Parser
            )
        parser = self._commands.add_parser(name, **kwargs)
        self.subcommands[name] = parser
        return parser


def load_options_file(path: str | Path) -> dict[str, Any]:
    """A YAML mapping of option names (``-`` and ``_`` alike, as on the command line) to values,
    read with ``yaml.safe_load``; :class:`UsageError` naming the file when it cannot be read or
    is not a mapping."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the configuration ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: a configuration must be a mapping of option: value")
    return {str(key).replace("-", "_"): value for key, value in data.items()}


def run_command(prog: str, command: Callable[[], int]) -> int:
    """Run ``command`` and return its exit code; an expected error is its one line on stderr
    and :attr:`~cmpdata.errors.CmpDataError.exit_code` (2 nothing done, 1 otherwise)."""
    try:
        return command()
    except CmpDataError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
