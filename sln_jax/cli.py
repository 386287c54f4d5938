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

__all__ = ["parse", "rerun_command", "stopped"]


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
