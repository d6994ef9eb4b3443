"""benchmarks/kernel_ab.py: a kernel revision against the working tree, alternating, in fresh
processes; a bad revision or length list is one clear error."""

import os
import re
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "kernel_ab.py")


def run(*args):
  return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))


def test_both_sources_timed_in_alternation():
  out = run("--rev", "HEAD", "--lengths", "8", "--rounds", "1")
  assert out.returncode == 0, out.stderr[-2000:]
  lines = out.stdout.splitlines()
  assert [l.split(":")[0] for l in lines] == ["round 1         HEAD", "round 1 working tree"]
  for line in lines:
    pairs = re.findall(r"(xla|cpu_kernel) ([0-9.]+) / ([0-9.]+)", line)
    assert [p[0] for p in pairs] == ["xla", "cpu_kernel"], line
    assert min(float(x) for p in pairs for x in p[1:]) > 0, line


@pytest.mark.parametrize("args,message", [
    (("--rev", "no-such-revision"), "--rev 'no-such-revision': git show failed"),
    (("--lengths", "0,97"), "--lengths '0,97': give positive integers"),
    (("--lengths", "x"), "--lengths 'x': give positive integers"),
])
def test_bad_arguments_are_one_line(args, message):
  out = run(*args)
  assert out.returncode != 0 and message in out.stderr.strip().splitlines()[-1]
