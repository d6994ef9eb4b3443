r"""Simulated CMS End-to-End jet images: Pythia 8 + FastJet events seen by a CMS-like detector.

Command line (the flags of `generate`):

  python -m mae_jax.simulation --process {qcd_quark_gluon,boosted_top} \
      --num N --output FILE.h5 [--seed S] [--workers W] [--split 0.8,0.1,0.1] \
      [--compression gzip|lzf] [--no-progress]

Python:

  from mae_jax.simulation import generate
  summary = generate("boosted_top", 1000, "top.h5", seed=0, workers=2)

Requires the `generate` extra (`pip install -e .[generate]`: `pythia8mc` and
`fastjet`); the package imports them lazily, so it can be imported without them.

Modules:
  detector   the detector model: particles -> one 125x125x8 image (pixelisation,
             track smearing, calorimeter cells and towers, pixel layers); numpy only.
  events     Pythia 8 + FastJet: the processes, jet finding, truth matching,
             process-level vetoes and the worker pool.
  writer     `generate`: balanced split assignment and the HDF5 file in the public
             E2E schema that `python -m mae_jax.data.convert` reads.
  __main__   the command line.

Determinism and parallelism: jet indices are cut into `workers` contiguous
slices. Worker `k` runs two Pythia instances (label 1 and label 0) seeded with
`SeedSequence([seed, k, label]).generate_state(1)[0] % 900_000_000 + 1` and a
numpy `PCG64` generator per instance for the detector smearing seeded with
`SeedSequence([seed, k, label, 1])`. The output is therefore identical for the
same (seed, workers, num), whatever the scheduling. Workers are separate
processes (`multiprocessing`; `fork` unless JAX/TensorFlow is already imported,
then `spawn`) streaming batches of images to the parent, which writes each
image straight into its row of the HDF5 file (written to `FILE.partial` and
renamed on success); only the small meta arrays are held in memory. The
reported rate (jets/s) counts jets written per wall-clock second including
Pythia initialisation.

Acceptance and speed (measured on a shared 2-core CPU, --num 200): q/g about
25 % of generated events give a jet (gluon and quark alike); top about 27 % of
tt̄ events give a fully merged top jet, QCD about 50 %. Rates: qcd_quark_gluon
32 jets/s with 1 worker, 53 with 2; boosted_top 37 jets/s with 1 worker, 57
with 2. Pythia's `next()` takes about half of the time, the Python particle
loop and PseudoJet construction most of the rest (the awkward-array bulk
interface of `fastjet` was slower per event than a list of PseudoJets here);
image building is ~2 ms per jet. Output is ~3-5 kB per jet on disk (gzip level
4 + shuffle; images are ~0.2-4 % non-zero).
"""

from mae_jax.simulation.writer import generate

__all__ = ["generate"]
