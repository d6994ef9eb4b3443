"""The benchmark script runs end to end on a tiny model (its numbers are not asserted: not a timed test)."""

import pytest
from mae_jax import bench
from helpers import converted_dataset


def rows_of(out, prefix):
  row = next(line for line in out.splitlines() if line.startswith(prefix))
  return [c.strip() for c in row.strip("|").split("|")]


@pytest.mark.slow
def test_bench_prints_table_with_pytorch_ratio(capsys):
  bench.main(["--variants", "tiny", "--batch", "8", "--steps", "1", "--torch"])
  out = capsys.readouterr().out
  assert "matmul ceiling" in out and "| tiny | 8 | dense |" in out
  assert "-> cpu_kernel" in out  # the CPU default is the fused attention kernel
  cells = rows_of(out, "| tiny | 8 | dense |")
  step = float(cells[5].split()[0])
  assert step > 0 and float(cells[7]) > 0  # step seconds, GFLOP per image
  assert float(cells[10]) > 0 and cells[11].endswith("×")  # PyTorch step and the ratio
  assert float(cells[13]) > 0  # peak host memory


@pytest.mark.slow
def test_sweep_rows_in_their_own_processes_and_sparse_tokens_on_real_jets(capsys, tmp_path):
  data = converted_dataset(tmp_path)
  bench.main(["--variants", "tiny", "--batch", "8", "--tokens", "dense,sparse", "--steps", "2",
              "--data", data])
  out = capsys.readouterr().out
  dense, sparse = rows_of(out, "| tiny | 8 | dense |"), rows_of(out, "| tiny | 8 | sparse |")
  assert float(dense[7]) >= float(sparse[7]) > 0  # GFLOP/image: fewer tokens, fewer FLOPs
  import re
  mean = float(re.search(r"occupied patches per jet mean ([0-9.]+)", out).group(1))
  assert 0 < mean < 25  # of the 25 patches of these 25x25 toy jets
  assert dense[10] == "nan" and float(sparse[12].rstrip("×")) > 0  # no --torch; sparse/dense
  assert "occupied patches per jet" in out and "padding" in out


def kernel_lowering_flops(config, image_shape):
  _, state, step, images = bench.train_step_setup(config, image_shape)
  cost = step.lower(state, images[0]).cost_analysis()
  return (cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"]


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


@pytest.mark.parametrize("bad", ["", "97,x", "0,626"])
def test_bad_attention_lengths_are_one_clear_error(bad):
  from mae_jax.errors import UsageError
  with pytest.raises(UsageError, match="--attention-lengths"):
    bench.main(["--attention", "--attention-lengths", bad])


def test_xla_flag_sets_parse_and_reject_what_is_not_label_equals_flags():
  from mae_jax.errors import UsageError
  assert bench.parse_flag_sets("default=; conc=--xla_a=1 --xla_b=x=y") == [
      ("default", ""), ("conc", "--xla_a=1 --xla_b=x=y")]
  for bad in ["onednn", "=--xla_a=1", "a=xla_a=1", "a=;a=--xla_b=1", "a=;;b="]:
    with pytest.raises(UsageError, match="--xla-flags"):
      bench.parse_flag_sets(bad)


def test_each_xla_flag_set_reaches_its_own_process():
  # XLA aborts on a flag it does not know: the child's failure names the set, which shows
  # the flags went to that process's XLA_FLAGS (and not to this one's).
  with pytest.raises(RuntimeError, match="Unknown flag in XLA_FLAGS: --xla_cpu_no_such_flag"):
    bench.main(["--variants", "tiny", "--batch", "2", "--steps", "1",
                "--xla-flags", "bogus=--xla_cpu_no_such_flag=1"])
