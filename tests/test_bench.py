"""The benchmark script runs end to end on a tiny model (its numbers are not asserted: not a timed test)."""

from mae_jax import bench


def rows_of(out, prefix):
  row = next(line for line in out.splitlines() if line.startswith(prefix))
  return [c.strip() for c in row.strip("|").split("|")]


def test_bench_prints_table_with_pytorch_ratio(capsys):
  bench.main(["--variants", "tiny", "--batch", "8", "--steps", "1", "--torch"])
  out = capsys.readouterr().out
  assert "matmul ceiling" in out and "| tiny | 8 |" in out
  assert "-> cpu_kernel" in out  # the CPU default is the fused attention kernel
  cells = rows_of(out, "| tiny | 8 |")
  assert float(cells[4]) > 0 and float(cells[6]) > 0  # step seconds, GFLOP per image
  assert float(cells[9]) > 0 and cells[10].endswith("×")  # PyTorch step and the ratio
  assert float(cells[11]) > 0  # peak host memory


def test_batch_sweep_measures_each_row_in_its_own_process(capsys):
  bench.main(["--variants", "tiny", "--batch", "8,16", "--steps", "1"])
  out = capsys.readouterr().out
  small, large = rows_of(out, "| tiny | 8 |"), rows_of(out, "| tiny | 16 |")
  assert float(small[6]) > 0 and abs(float(small[6]) - float(large[6])) < 0.02  # GFLOP/image
  assert small[9] == "nan"  # no --torch


def kernel_lowering_flops(config, image_shape):
  _, state, step, images = bench.train_step_setup(config, image_shape)
  return step.lower(state, images).cost_analysis()["flops"]


def test_model_flops_count_attention_whatever_the_kernel():
  # XLA's cost analysis cannot see inside the kernel's custom call, so bench counts FLOPs on
  # the XLA-attention lowering. The difference between the two counts must be attention:
  # per block 12 * B * H * T^2 * D for the six [T, T] matmuls of forward + backward, plus
  # the softmax's elementwise FLOPs (about 10% more here).
  b = 8
  config = bench._pretrain_config("tiny", b, "float32", "cpu_kernel")
  with_attention = bench.model_flops(config, (125, 125, 8))
  without = kernel_lowering_flops(config, (125, 125, 8))
  # tiny: encoder 2 blocks, 4 heads of 16, 1 + 157 tokens; decoder 1 block, 4 heads of 8, 626
  matmuls = 2 * 12 * b * 4 * 158**2 * 16 + 1 * 12 * b * 4 * 626**2 * 8
  assert 1.0 <= (with_attention - without) / matmuls <= 1.25


def test_attention_timing_runs_every_implementation():
  times = bench.attention_times(shape=(2, 20, 2, 16), with_torch=True)
  assert set(times) == {"xla", "cpu_kernel", "torch_sdpa"}
  assert all(f > 0 and fb > 0 for f, fb in times.values())
