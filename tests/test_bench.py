"""The benchmark script runs end to end on a tiny model (its numbers are not asserted: not a timed test)."""

from mae_jax import bench


def test_bench_prints_table_with_pytorch_ratio(capsys):
  bench.main(["--variants", "tiny", "--batch", "8", "--steps", "1", "--torch"])
  out = capsys.readouterr().out
  assert "matmul ceiling" in out and "| tiny | 8 |" in out
  row = next(line for line in out.splitlines() if line.startswith("| tiny | 8 |"))
  cells = [c.strip() for c in row.strip("|").split("|")]
  assert float(cells[3]) > 0 and float(cells[5]) > 0  # step seconds, GFLOP per image
  assert float(cells[8]) > 0 and cells[9].endswith("×")  # PyTorch step and the ratio
