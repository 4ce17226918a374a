"""Every ``python -m experiments.<binary>`` and ``python -m benchmarks.<name>``
command the docs give still runs.

A user copies the commands of README.md, docs/, benchmarks/'s READMEs and
the binaries', configs' and benchmarks' docstrings; a renamed option, a
dropped variant or a method spec that no longer parses would make them fail
after minutes of searching, or at once with an error the docs never
mention. Here every such command is checked without running it: its binary
exists and defines each flag it is given, and an experiment's config, with
the command's overrides applied by ``ml_collections``' own flag parser,
passes the checks the binary runs before any compute (the study's
``validate`` on its grid, else ``pruning.validate``).

The commands are found by running each ```bash block (and each docstring's
command lines) in bash with a PATH that holds only recording stand-ins for
``python``/``python3``/``pip``, so loops, variables and ``&&`` chains
expand as a user's shell would, and nothing else the block names runs.
"""

import functools
import glob
import os
import re
import subprocess
import textwrap

import _docs  # tests/_docs.py: the docs the doc tests read
import pytest
from absl import flags
from ml_collections import config_flags

from awt import pruning
from awt.studies import compare_tickets, sparsity_robustness

ROOT, DOCS = _docs.ROOT, _docs.DOCS

PY_DOCSTRINGS = sorted(
  os.path.relpath(p, ROOT)
  for pattern in (
    "experiments/*.py",
    "experiments/configs/*.py",
    "benchmarks/*.py",
    "benchmarks/peers/*.py",
  )
  for p in glob.glob(os.path.join(ROOT, pattern))
)
SEP = "\x1f"  # between one command's arguments in the record

# The stand-ins: python/python3 append their argv (SEP-joined, one command
# a line) to $AWT_DOC_LOG in one write, so that commands a block starts in
# the background (`&`) cannot interleave their lines; `python3 -m venv DIR`
# also makes DIR/bin/activate so that a README install chain goes on to its
# command; pip does nothing.
RECORDER = f"""#!/bin/sh
line=
for a in "$@"; do line="$line$a{SEP}"; done
printf '%s\\n' "$line" >> "$AWT_DOC_LOG"
if [ "$1" = -m ] && [ "$2" = venv ]; then
  /bin/mkdir -p "$3/bin" && : > "$3/bin/activate"
fi
"""


def _bash_blocks(text: str) -> list[str]:
  """The bodies of the ```bash fences of a markdown text."""
  blocks, lang, body = [], None, []
  for line in text.split("\n"):
    if not line.startswith("```"):
      body.append(line)
    elif lang is None:
      lang, body = line[3:].strip(), []
    else:
      if lang == "bash":
        blocks.append("\n".join(body))
      lang = None
  return blocks


def _docstring_commands(text: str) -> list[str]:
  """Command lines (with their backslash continuations) of a module
  docstring: the launch commands of the binaries and configs."""
  doc = re.match(r'\s*[rR]?"""(.*?)"""', text, re.S)
  if not doc:
    return []
  blocks, lines = [], doc.group(1).split("\n")
  for i, line in enumerate(lines):
    if line.strip().startswith(
      ("python -m experiments.", "python -m benchmarks.")
    ):
      cmd = [line]
      while cmd[-1].rstrip().endswith("\\") and i + len(cmd) < len(lines):
        cmd.append(lines[i + len(cmd)])
      blocks.append(textwrap.dedent("\n".join(cmd)))
  return blocks


def _recorded(blocks: list[str], tmp_path) -> list[list[str]]:
  """The argv of every ``-m experiments.*`` / ``-m benchmarks.*`` call the
  blocks make."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir(exist_ok=True)
  for name in ("python", "python3", "pip"):
    path = bin_dir / name
    path.write_text(RECORDER if name != "pip" else "#!/bin/sh\n")
    path.chmod(0o755)
  log = tmp_path / "calls.log"
  log.write_text("")
  for block in blocks:
    subprocess.run(
      # noclobber: a redirection in a block never truncates a user's file.
      ["/bin/bash", "-c", "set -o noclobber\n" + block],
      env={"PATH": str(bin_dir), "AWT_DOC_LOG": str(log), "HOME": "/"},
      cwd=tmp_path,
      stdin=subprocess.DEVNULL,
      capture_output=True,
      check=False,
    )
  calls = [line.split(SEP)[:-1] for line in log.read_text().splitlines()]
  return [
    c
    for c in calls
    if len(c) > 1
    and c[0] == "-m"
    and c[1].startswith(("experiments.", "benchmarks."))
  ]


@functools.cache
def _flag_names(path: str) -> frozenset[str]:
  """Flags a binary defines: its own, absl's and, for the experiments,
  ``_main``'s."""
  names = {"helpfull", "help", "flagfile", "undefok"}
  shared = ["experiments/_main.py"] if path.startswith("experiments/") else []
  for module in (path, *shared):
    with open(os.path.join(ROOT, module)) as f:
      names |= set(re.findall(r'DEFINE_\w+\(\s*"(\w+)"', f.read()))
  return frozenset(names)


def _check(argv: list[str]) -> None:
  """Raises with the reason when the command would fail before running."""
  path = argv[1].replace(".", "/") + ".py"
  binary = argv[1].removeprefix("experiments.")
  if not os.path.exists(os.path.join(ROOT, path)):
    raise ValueError(f"no binary {path}")
  known = _flag_names(path)
  config_args, values = [], {}
  for arg in argv[2:]:
    if not arg.startswith("-"):
      continue  # a positional argument (summarize's workdirs)
    name, _, value = arg.lstrip("-").partition("=")
    if path.startswith("experiments/") and (
      name == "config" or name.startswith("config.")
    ):
      config_args.append(arg)
      continue
    if name not in known and not (name.startswith("no") and name[2:] in known):
      raise ValueError(f"{path} defines no flag --{name}")
    values[name] = value
  if not config_args:
    return
  fv = flags.FlagValues()
  parse_args = ["prog", *config_args]
  config_flags.DEFINE_config_file(
    "config", None, flag_values=fv, lock_config=True, sys_argv=parse_args
  )
  cwd = os.getcwd()
  os.chdir(ROOT)  # config paths are relative to the repository root
  try:
    fv(parse_args)
  finally:
    os.chdir(cwd)
  config = fv.config
  if binary in ("compare_tickets", "select_lr"):
    compare_tickets.validate(config, **compare_tickets.grid(config.sweep))
  elif binary == "sparsity_robustness":
    sparsity_robustness.validate(config)
  else:
    pruning.validate(config)
  if binary == "ntk_spectra" and "methods" in values:
    unknown = set(values["methods"].split(",")) - {"dense", *pruning.names()}
    if unknown:
      raise ValueError(f"--methods: unknown {sorted(unknown)}")
  if binary == "ntk_spectra" and "sparsities" in values:
    for s in values["sparsities"].split(","):
      if not 0 <= float(s) < 1:
        raise ValueError(f"--sparsities: {s} not in [0, 1)")


def _commands(path: str, tmp_path) -> list[list[str]]:
  with open(os.path.join(ROOT, path)) as f:
    text = f.read()
  if path.endswith(".md"):
    blocks = _bash_blocks(text)
  else:
    blocks = _docstring_commands(text)
  return _recorded(blocks, tmp_path)


@pytest.mark.parametrize("path", DOCS + PY_DOCSTRINGS)
def test_every_documented_command_parses_and_validates(path, tmp_path):
  failures = []
  for argv in _commands(path, tmp_path):
    try:
      _check(argv)
    except Exception as e:  # noqa: BLE001 (report every failing command)
      failures.append(f"python {' '.join(argv)}\n  -> {type(e).__name__}: {e}")
  assert not failures, f"{path}:\n" + "\n".join(failures)


def test_the_commands_are_found(tmp_path):
  """The extraction finds what the docs hold (else the test above checks
  nothing): the README's main job, the loops of docs/results/awt.md
  expanded, every binary's launch command."""
  readme = _commands("README.md", tmp_path)
  assert ["-m", "experiments.compare_tickets"] in [c[:2] for c in readme]
  results = _commands("docs/results/awt.md", tmp_path)
  assert len(results) > 40
  assert any("--config.sweep.sparsities=(0.98,)" in c for c in results)
  for path in PY_DOCSTRINGS:
    if os.path.dirname(path) == "experiments" and not os.path.basename(
      path
    ).startswith("_"):
      assert _commands(path, tmp_path), path
  benchmarks = {c[1] for c in _commands("benchmarks/README.md", tmp_path)}
  assert {"benchmarks.attacks", "benchmarks.ticket_cost"} <= benchmarks


def test_a_broken_command_is_reported():
  good = [
    "-m",
    "experiments.compare_tickets",
    "--config=experiments/configs/compare_tickets.py:mnist5k",
    "--config.sweep.methods=('awt','snip')",
    "--workdir=/tmp/x",
  ]
  _check(good)
  with pytest.raises(ValueError, match="no flag --workdirs"):
    _check([*good[:-1], "--workdirs=/tmp/x"])
  with pytest.raises(Exception, match="no_such_method"):
    _check([*good[:3], "--config.sweep.methods=('no_such_method',)"])
  with pytest.raises(Exception, match="awt_no_such_option"):
    _check([*good[:3], "--config.sweep.methods=('awt:awt_no_such_option=1',)"])
  with pytest.raises(Exception, match="no_such_field"):
    _check([*good[:3], "--config.pruning.no_such_field=1"])
  _check(["-m", "benchmarks.seeds", "--config=mnist5k_lenet5", "--seeds=8"])
  with pytest.raises(ValueError, match="seeds.py defines no flag --members"):
    _check(["-m", "benchmarks.seeds", "--members=8"])
  with pytest.raises(ValueError, match="no binary benchmarks/no_such.py"):
    _check(["-m", "benchmarks.no_such"])
