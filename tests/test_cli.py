"""sln_jax.cli: absl flags parsed per call, with argparse-like exit statuses."""

import pytest
from absl import flags

from sln_jax import cli


def _define(values):
    flags.DEFINE_string("gt", None, "ground truth", flag_values=values)
    flags.DEFINE_integer("num", 3, "a count", flag_values=values)
    flags.DEFINE_bool("no_progress", False, "no bar", flag_values=values)
    flags.DEFINE_multi_enum("kind", ["a", "b"], ["a", "b"], "kinds", flag_values=values)
    flags.mark_flag_as_required("gt", flag_values=values)


def test_values_defaults_and_repeated_calls():
    values = cli.parse(_define, ["--gt", "x.json", "--num=5", "--no_progress", "--kind", "b"], "p")
    assert (values.gt, values.num, values.no_progress, values.kind) == ("x.json", 5, True, ["b"])
    again = cli.parse(_define, ["--gt=y"], "p")  # a fresh FlagValues: nothing carried over
    assert (again.gt, again.num, again.no_progress, again.kind) == ("y", 3, False, ["a", "b"])


@pytest.mark.parametrize("argv, message", [
    ([], "--gt"), (["--gt", "x", "--num", "two"], "num"), (["--gt", "x", "--bogus"], "bogus"),
    (["--gt", "x", "extra"], "unexpected arguments"), (["--gt", "x", "--kind", "c"], "kind"),
])
def test_bad_command_lines_exit_2_naming_the_problem(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.parse(_define, argv, "prog")
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("prog: error:") and message in err


def test_help_lists_the_flags(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.parse(_define, ["--help"], "prog")
    assert exit_.value.code == 0
    assert "--gt" in capsys.readouterr().out
