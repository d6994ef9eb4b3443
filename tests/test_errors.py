"""The error policy: the project's own errors are one line and exit status 2 at the entry
points; any other exception (a bug) keeps its traceback; library code never exits."""

import ast
import os
import pathlib
import subprocess
import sys

import pytest

from mae_jax import errors
from helpers import ROOT


def _raise(exc):
  raise exc


def test_project_errors_are_one_line_with_exit_status_2(capsys, monkeypatch):
  monkeypatch.delenv("MAE_JAX_TRACEBACK", raising=False)
  for exc in (errors.UsageError("--steps 'x': bad"), errors.MissingPathError("no data at /d"),
              errors.NonFiniteError("non-finite loss at step 3"),
              errors.CorruptDataError("shard x corrupted")):
    assert errors.run_cli(_raise, exc) == 2
    err = capsys.readouterr().err
    assert err == f"error: {exc}\n"
  assert errors.run_cli(lambda: None) == 0
  assert errors.run_cli(lambda: [1, 2]) == 0  # a main that returns its results
  assert errors.run_cli(lambda: 1) == 1


def test_other_errors_keep_their_traceback(monkeypatch):
  monkeypatch.delenv("MAE_JAX_TRACEBACK", raising=False)
  # a ValueError/KeyError from flax, jax or a model under development is a bug, not a message
  for exc in (ValueError("shape mismatch in a Dense layer"), KeyError("params"),
              FileNotFoundError("an internal file")):
    with pytest.raises(type(exc)):
      errors.run_cli(_raise, exc)


def test_traceback_on_request(monkeypatch):
  monkeypatch.setenv("MAE_JAX_TRACEBACK", "1")
  with pytest.raises(errors.UsageError, match="bad value"):
    errors.run_cli(_raise, errors.UsageError("bad value"))


def test_error_types():
  # a diverged loss is not a data-format fault, and stays a one-line error
  assert not issubclass(errors.NonFiniteError, errors.DataFormatError)
  assert not issubclass(errors.NonFiniteError, ValueError)
  assert errors.NonFiniteError in errors.USER_ERRORS
  assert ValueError not in errors.USER_ERRORS and KeyError not in errors.USER_ERRORS
  # callers that catch the builtin types still catch the project's path errors
  assert issubclass(errors.MissingPathError, FileNotFoundError)
  assert issubclass(errors.PathExistsError, FileExistsError)
  assert issubclass(errors.UsageError, ValueError)


def test_library_code_never_exits():
  """`raise SystemExit` / `sys.exit` only in the command-line entry points."""
  entry = {"main.py", "__main__.py", "cli.py", "bench.py", "compare.py",
           os.path.join("protocol", "__init__.py"), os.path.join("data", "convert.py")}
  offenders = []
  pkg = pathlib.Path(ROOT) / "mae_jax"
  for path in pkg.rglob("*.py"):
    tree = ast.parse(path.read_text())
    rel = str(path.relative_to(pkg))
    for node in ast.walk(tree):
      if isinstance(node, ast.Raise) and node.exc is not None:
        target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
        if isinstance(target, ast.Name) and target.id == "SystemExit":
          offenders.append(f"{rel}:{node.lineno} raise SystemExit")
      if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
          and node.func.attr == "exit" and getattr(node.func.value, "id", "") == "sys" \
          and rel not in entry and os.path.basename(rel) not in entry:
        offenders.append(f"{rel}:{node.lineno} sys.exit")
  assert not offenders, offenders


def test_protocol_wrong_data_path_fails_at_once(tmp_path):
  """One line, exit status 2, within seconds (before jax or TensorFlow load), no workdir."""
  root = tmp_path / "root"
  env = dict(os.environ, PYTHONPATH=ROOT)
  env.pop("MAE_JAX_TRACEBACK", None)
  r = subprocess.run([sys.executable, "-X", "importtime", "-m", "mae_jax.protocol",
                      "--data", str(tmp_path / "nope"), "--root", str(root)],
                     capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
  assert r.returncode == 2
  lines = [ln for ln in r.stderr.splitlines() if not ln.startswith("import time:")]
  assert lines == [f"error: {tmp_path / 'nope'} is not a converted mae_jax dataset "
                   "(mae_jax_meta.json missing); make one with `python -m mae_jax.data.convert "
                   "--input FILE.h5 --output DIR`."]
  imported = {ln.split("|")[-1].strip() for ln in r.stderr.splitlines()
              if ln.startswith("import time:")}
  assert not imported & {"jax", "tensorflow", "flax"}
  assert not root.exists()
