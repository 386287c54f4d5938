"""The one command-line convention: absl flags.

Programs whose run is a config (``sln_jax.main``, ``sln_jax.demo``, ``sln_jax.infer``) define
their flags on absl's global ``FLAGS`` with ml_collections' ``config_flags`` (so any config
field is ``--config.a.b=value``) when run as programs, and run under ``absl.app``. The other
programs (``sln_jax.evaluate``, ``data_prep.convert``, ``data_prep.preview``,
``data_prep.synthetic``) define theirs on a fresh ``FlagValues`` per call (``parse``), so that
``main(argv)`` stays a plain function returning the exit status, callable many times (tests).
Either way the syntax is absl's: ``--name value`` or ``--name=value``, ``--flag`` /
``--noflag`` for booleans, repeated ``--name`` for multi-value flags, ``--help``.

Ground floor: absl only.
"""

from __future__ import annotations

import shlex
import sys
from typing import Callable, Sequence

from absl import flags

__all__ = ["error", "parse", "parse_global", "rerun_command", "stopped"]


def error(prog: str, message: object, status: int = 1) -> SystemExit:
    """Prints ``PROG: error: MESSAGE`` on stderr; returns ``SystemExit(status)`` to raise."""
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    return SystemExit(status)


def _innermost_message(error: BaseException) -> str:
    """ml_collections wraps a KeyError's text in an AttributeError: the text itself."""
    while error.args and isinstance(error.args[0], BaseException):
        error = error.args[0]
    text = str(error.args[0]) if error.args else str(error)
    return text.replace("\n", "; ")


def parse_global(prog: str) -> Callable[[list[str]], list[str]]:
    """A ``flags_parser`` for ``absl.app.run`` on the global ``FLAGS``: one-line errors.

    absl prints bad flag values itself, but a ``--config.a.b=value`` override naming a field
    the config does not have raises from ml_collections with a traceback; both become
    ``PROG: error: ...`` and exit status 2, as in ``parse``.
    """
    def parser(argv: list[str]) -> list[str]:
        try:
            return flags.FLAGS(argv)
        except flags.Error as error:
            message = str(error)
        except (AttributeError, KeyError) as error:
            key = _innermost_message(error)
            name = key.split(";")[0].strip("'\"")
            overrides = [arg.split("=")[0] for arg in argv[1:]
                         if arg.startswith("--config.") and name in arg.split("=")[0]]
            where = f"{overrides[0]}: " if overrides else ""
            message = f"{where}the config has no field {key}"
        print(f"{prog}: error: {message} (--help lists the flags)", file=sys.stderr)
        raise SystemExit(2)
    return parser


def rerun_command(module: str) -> str:
    """This process's command line as ``python -m MODULE ARGS`` (shell-quoted)."""
    return shlex.join(["python", "-m", module, *sys.argv[1:]])


def stopped(status: int, what: str, module: str) -> SystemExit:
    """Prints ``what`` and the command that resumes the run; returns ``SystemExit(status)``.

    For a run that stopped on SIGINT / SIGTERM (status 130 / 143): no traceback, one
    sentence and the command (this process's own, since the run resumes from its workdir).
    """
    print(f"{what}\nresume with: {rerun_command(module)}", file=sys.stderr, flush=True)
    return SystemExit(status)


def parse(define: Callable[[flags.FlagValues], None], argv: Sequence[str] | None,
          prog: str) -> flags.FlagValues:
    """Flags of one program parsed from ``argv`` into a fresh ``FlagValues``.

    Args:
      define: defines the program's flags on the ``FlagValues`` it is given.
      argv: the arguments without the program name (default ``sys.argv[1:]``).
      prog: the program's name for messages (``python -m package.module``).

    Returns:
      The parsed flags (``values.name``).

    Raises:
      SystemExit: status 2 with a one-line message for unknown, malformed or missing flags
        and for positional arguments; status 0 after printing the help for ``--help``.
    """
    values = flags.FlagValues()
    define(values)
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(arg in ("-h", "--help", "--helpshort", "--helpfull") for arg in argv):
        print(f"usage: {prog} [flags]\n\n{values.get_help(include_special_flags=False)}")
        raise SystemExit(0)
    try:
        rest = values([prog] + argv)
    except flags.Error as error:
        print(f"{prog}: error: {error} (--help lists the flags)", file=sys.stderr)
        raise SystemExit(2) from None
    if len(rest) > 1:
        print(f"{prog}: error: unexpected arguments {rest[1:]}", file=sys.stderr)
        raise SystemExit(2)
    return values
