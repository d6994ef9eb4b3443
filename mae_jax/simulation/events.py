"""Pythia 8 + FastJet: the processes, jet finding, truth matching and the worker pool.

Processes (pp at 13 TeV, Pythia 8 defaults otherwise: MPI, ISR/FSR,
hadronisation and decays on; no pile-up):

  qcd_quark_gluon
    Two separate Pythia instances: quarks from `HardQCD:qq2qq` +
    `HardQCD:qqbar2qqbarNew`, gluons from `HardQCD:gg2gg` + `HardQCD:qqbar2gg`;
    `PhaseSpace:pTHatMin/Max = 70/130` GeV. Jets: anti-kT R = 0.4 on all
    visible final-state particles. The *leading* jet of the event must have
    70 < pT < 100 GeV and |η| < 1.5 (about 25 % of events pass; the window sits
    inside the pTHat range, away from its upper edge) and must be matched
    within ΔR < 0.4 to an outgoing hard-process parton (the closest one):
    gluon (id 21) -> label 1 from the gluon instance, quark (|id| <= 5) ->
    label 0 from the quark instance. Otherwise the event is rejected.
  boosted_top
    Signal: `Top:gg2ttbar` + `Top:qqbar2ttbar` with hadronic W decays
    (`24:onMode = off`, `24:onIfAny = 1 2 3 4 5`); background: `HardQCD:all`;
    both with pTHat 400–600 GeV. Jets: anti-kT R = 0.8; the leading jet must
    have 400 < pT < 550 GeV and |η| < 1.5. Top jets must have a top quark, its
    b quark and both W-decay quarks (hard-process record) within ΔR < 0.8 of
    the jet axis (fully merged); QCD jets have no matching.

Events that cannot pass the truth matching are vetoed at process level with a
Pythia `UserHooks` (before showering/hadronisation), which is lossless: a
hard-process parton with |η| < 1.5 + 0.4 (q/g), or a top whose t, b, q, q' all
have |η| < 1.5 + 0.8 and pairwise ΔR < 1.6 (top). The QCD background is not
vetoed.

`run_workers` runs one worker per slice of jet indices (seeding: see the
package docstring) and yields their batches of images as they arrive.
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing as mp
import os
import queue as queue_mod
import sys
import traceback
from typing import Iterator, Sequence

import numpy as np

from mae_jax.simulation import detector

BATCH = 8  # images per message from a worker


@dataclasses.dataclass(frozen=True)
class ProcessSpec:
  """One process: Pythia settings per label, jet definition and selection, label meaning."""

  name: str
  jet_radius: float
  jet_pt_min: float
  jet_pt_max: float
  jet_abs_eta_max: float
  pthat_min: float
  pthat_max: float
  settings: dict  # label -> list of Pythia settings
  label_definition: str
  label_names: tuple  # class name per label value (index 0 -> label 0)


PROCESSES = {
    "qcd_quark_gluon": ProcessSpec(
        name="qcd_quark_gluon",
        jet_radius=0.4,
        jet_pt_min=70.0,
        jet_pt_max=100.0,
        jet_abs_eta_max=1.5,
        pthat_min=70.0,
        pthat_max=130.0,
        settings={
            1: ["HardQCD:gg2gg = on", "HardQCD:qqbar2gg = on"],
            0: ["HardQCD:qq2qq = on", "HardQCD:qqbar2qqbarNew = on"],
        },
        label_definition=("1 = gluon jet (matched to a hard gluon), "
                          "0 = quark jet (matched to a hard quark |id|<=5)"),
        label_names=("quark", "gluon"),
    ),
    "boosted_top": ProcessSpec(
        name="boosted_top",
        jet_radius=0.8,
        jet_pt_min=400.0,
        jet_pt_max=550.0,
        jet_abs_eta_max=1.5,
        pthat_min=400.0,
        pthat_max=600.0,
        settings={
            1: ["Top:gg2ttbar = on", "Top:qqbar2ttbar = on",
                "24:onMode = off", "24:onIfAny = 1 2 3 4 5"],
            0: ["HardQCD:all = on"],
        },
        label_definition=("1 = fully merged hadronic top jet (t, b, q, q' within dR<0.8), "
                          "0 = QCD jet"),
        label_names=("qcd", "top"),
    ),
}

COMMON_SETTINGS = [
    "Beams:eCM = 13000.",
    "Print:quiet = on",
    "Next:numberCount = 0",
    "Random:setSeed = on",
]


def _pythia_seed(seed: int, worker: int, label: int) -> int:
  state = np.random.SeedSequence([seed, worker, label]).generate_state(1)[0]
  return int(state) % 900_000_000 + 1


def _delta_r(eta1, phi1, eta2, phi2):
  return math.hypot(eta1 - eta2, (phi1 - phi2 + math.pi) % (2 * math.pi) - math.pi)


def _hard_partons(process):
  """Outgoing hard-process partons (status 23) as (id, eta, phi)."""
  out = []
  for i in range(process.size()):
    p = process[i]
    if p.status() == 23 and (p.idAbs() <= 5 or p.id() == 21):
      out.append((p.id(), p.eta(), p.phi()))
  return out


def _top_systems(process):
  """For each top in the hard process: [(eta, phi) of t, b, q, q']."""
  systems = []
  for i in range(process.size()):
    t = process[i]
    if t.idAbs() != 6:
      continue
    b = w = None
    for d in t.daughterList():
      dp = process[d]
      if dp.idAbs() == 5:
        b = dp
      elif dp.idAbs() == 24:
        w = dp
    if b is None or w is None:
      continue
    # follow W copies down to its decay products
    while True:
      dl = list(w.daughterList())
      if len(dl) == 1 and process[dl[0]].idAbs() == 24:
        w = process[dl[0]]
        continue
      break
    quarks = [process[d] for d in dl if process[d].idAbs() <= 5]
    if len(quarks) != 2:
      continue
    systems.append([(p.eta(), p.phi()) for p in (t, b, quarks[0], quarks[1])])
  return systems


def _make_hook(pythia8mc, spec: ProcessSpec, label: int):
  """A lossless process-level veto (None for the unvetoed QCD background)."""
  if spec.name == "qcd_quark_gluon":
    eta_cut = spec.jet_abs_eta_max + 0.4

    def accept(process):
      want21 = label == 1
      for pid, eta, _ in _hard_partons(process):
        if abs(eta) < eta_cut and ((pid == 21) == want21):
          return True
      return False

  elif spec.name == "boosted_top" and label == 1:
    eta_cut = spec.jet_abs_eta_max + 0.8

    def accept(process):
      for sys_ in _top_systems(process):
        if all(abs(eta) < eta_cut for eta, _ in sys_):
          d = sys_[1:]
          if all(_delta_r(*d[i], *d[j]) < 1.6 for i in range(3) for j in range(i + 1, 3)):
            return True
      return False

  else:
    return None

  class _Veto(pythia8mc.UserHooks):
    def __init__(self):
      pythia8mc.UserHooks.__init__(self)
      self.n_vetoed = 0

    def canVetoProcessLevel(self):
      return True

    def doVetoProcessLevel(self, process):
      ok = accept(process)
      if not ok:
        self.n_vetoed += 1
      return not ok

  return _Veto()


def _silence_fastjet_banner():
  import fastjet

  sys.stdout.flush()
  saved = os.dup(1)
  devnull = os.open(os.devnull, os.O_WRONLY)
  try:
    os.dup2(devnull, 1)
    fastjet._swig.ClusterSequence.print_banner()
  finally:
    os.dup2(saved, 1)
    os.close(saved)
    os.close(devnull)


class _Source:
  """One Pythia instance producing accepted jets of one label."""

  MAX_FAILURES = 1000

  def __init__(self, spec: ProcessSpec, label: int, seed: int, worker: int):
    import fastjet
    import pythia8mc

    self.spec, self.label = spec, label
    self.fastjet = fastjet
    self.pythia = pythia8mc.Pythia("", False)
    settings = COMMON_SETTINGS + [
        f"Random:seed = {_pythia_seed(seed, worker, label)}",
        f"PhaseSpace:pTHatMin = {spec.pthat_min}",
        f"PhaseSpace:pTHatMax = {spec.pthat_max}",
    ] + spec.settings[label]
    for s in settings:
      if not self.pythia.readString(s):
        raise RuntimeError(f"Pythia rejected setting {s!r}")
    self.hook = _make_hook(pythia8mc, spec, label)  # keep alive
    if self.hook is not None:
      self.pythia.setUserHooksPtr(self.hook)
    if not self.pythia.init():
      raise RuntimeError(f"Pythia init failed for {spec.name} label {label}")
    seq = np.random.SeedSequence([seed, worker, label, 1])
    self.rng = np.random.Generator(np.random.PCG64(seq))
    self.jetdef = fastjet.JetDefinition(fastjet.antikt_algorithm, spec.jet_radius)
    self.n_next = 0
    self.n_accepted = 0

  @property
  def n_events(self) -> int:
    """Pythia events generated, including those vetoed at process level."""
    return self.n_next + (self.hook.n_vetoed if self.hook is not None else 0)

  def _visible(self):
    """Visible final-state particles (pythia8mc.Particle copies)."""
    return [p for p in self.pythia.event.particles() if p.status() > 0 and p.isVisible()]

  @staticmethod
  def _particle_array(vis):
    rows = [(p.px(), p.py(), p.pz(), p.e(), p.id(), p.charge(), p.xProd(), p.yProd(), p.zProd())
            for p in vis]
    return np.array(rows, dtype=np.float64).reshape(-1, 9)

  def _matched(self, jeta, jphi) -> bool:
    spec, process = self.spec, self.pythia.process
    if spec.name == "qcd_quark_gluon":
      best, best_id = 0.4, None
      for pid, eta, phi in _hard_partons(process):
        d = _delta_r(jeta, jphi, eta, phi)
        if d < best:
          best, best_id = d, pid
      if best_id is None:
        return False
      return (best_id == 21) if self.label == 1 else (abs(best_id) <= 5)
    if self.label == 1:  # top
      for sys_ in _top_systems(process):
        if all(_delta_r(jeta, jphi, eta, phi) < spec.jet_radius for eta, phi in sys_):
          return True
      return False
    return True  # QCD background: no matching

  def next_jet(self):
    """Generate events until one passes; return (image, meta[3])."""
    spec, fj = self.spec, self.fastjet
    failures = 0
    while True:
      self.n_next += 1
      if not self.pythia.next():
        failures += 1
        if failures > self.MAX_FAILURES:
          raise RuntimeError("Pythia failed to generate events repeatedly")
        continue
      vis = self._visible()
      pjs = [fj.PseudoJet(p.px(), p.py(), p.pz(), p.e()) for p in vis]
      cs = fj._swig.ClusterSequence(pjs, self.jetdef)  # keep alive while jets are used
      jets = fj.sorted_by_pt(cs.inclusive_jets(0.5 * spec.jet_pt_min))
      if not jets:
        continue
      jet = jets[0]
      jpt, jeta, jphi, jm = jet.pt(), jet.eta(), jet.phi_std(), jet.m()
      del jets, cs
      if not (spec.jet_pt_min < jpt < spec.jet_pt_max and abs(jeta) < spec.jet_abs_eta_max):
        continue
      if not self._matched(jeta, jphi):
        continue
      img = detector.make_image(self._particle_array(vis), jeta, jphi, self.rng)
      self.n_accepted += 1
      return img, np.array([self.label, max(jm, 0.0), jpt], np.float32)


def _produce(process: str, seed: int, worker: int, indices: np.ndarray) -> Iterator[tuple]:
  """Messages for the jet `indices`, in order.

  ("jets", worker, (indices, images, metas)) batches of up to BATCH jets, then
  ("done", worker, {label: (pythia_events, accepted_jets)}).
  """
  spec = PROCESSES[process]
  _silence_fastjet_banner()
  sources = {1: _Source(spec, 1, seed, worker), 0: _Source(spec, 0, seed, worker)}
  buf_i, buf_img, buf_meta = [], [], []
  for i in indices:
    img, meta = sources[1 if i % 2 == 0 else 0].next_jet()
    buf_i.append(int(i))
    buf_img.append(img)
    buf_meta.append(meta)
    if len(buf_i) == BATCH:
      yield "jets", worker, (np.array(buf_i), np.stack(buf_img), np.stack(buf_meta))
      buf_i, buf_img, buf_meta = [], [], []
  if buf_i:
    yield "jets", worker, (np.array(buf_i), np.stack(buf_img), np.stack(buf_meta))
  yield "done", worker, {label: (s.n_events, s.n_accepted) for label, s in sources.items()}


def _worker_main(process, seed, worker, indices, out_queue):
  try:
    for message in _produce(process, seed, worker, indices):
      out_queue.put(message)
  except BaseException:
    out_queue.put(("error", worker, traceback.format_exc()))


def versions() -> str:
  """The `generator` attribute: "pythia8mc <version> + fastjet <version>"."""
  from importlib import metadata

  import fastjet

  try:
    pv = metadata.version("pythia8mc")
  except metadata.PackageNotFoundError:  # pragma: no cover
    pv = "unknown"
  fv = getattr(fastjet, "__version__", None) or metadata.version("fastjet")
  return f"pythia8mc {pv} + fastjet {fv}"


def _start_method() -> str:
  heavy = any(m in sys.modules for m in ("jax", "tensorflow", "torch"))
  if heavy or "fork" not in mp.get_all_start_methods():
    return "spawn"
  return "fork"


def run_workers(process: str, seed: int, slices: Sequence[np.ndarray]) -> Iterator[tuple]:
  """The messages of `_produce` from one worker per slice of jet indices, as they arrive.

  One slice runs in this process, more run in one child process each. A worker's
  failure raises RuntimeError with its traceback. Closing the generator early
  (`contextlib.closing`) terminates the workers that are still running.
  """
  if len(slices) == 1:
    yield from _produce(process, seed, 0, slices[0])
    return
  ctx = mp.get_context(_start_method())
  q = ctx.Queue(maxsize=4 * len(slices))
  procs = []
  try:
    for k, indices in enumerate(slices):
      p = ctx.Process(target=_worker_main, args=(process, seed, k, indices, q), daemon=True)
      p.start()
      procs.append(p)
    done = set()
    while len(done) < len(procs):
      try:
        kind, k, payload = q.get(timeout=2.0)
      except queue_mod.Empty:
        for k2, p in enumerate(procs):
          if k2 not in done and not p.is_alive():
            raise RuntimeError(f"worker {k2} died (exit code {p.exitcode})")
        continue
      if kind == "error":
        raise RuntimeError(f"worker {k} failed:\n{payload}")
      if kind == "done":
        done.add(k)
      yield kind, k, payload
    for p in procs:
      p.join()
  finally:
    for p in procs:
      if p.is_alive():
        p.terminate()
        p.join(5)
