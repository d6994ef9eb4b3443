"""The import graph of mae_jax/ (read from the source, module-level and function-level
imports alike): no module imports a higher layer, and the only import circle is the
intentional optional-Beam one (data/convert.py <-> data/beam_convert.py)."""

import ast
import os

from helpers import ROOT

# lowest first; a module may import its own layer or lower ones. Command-line tools and
# their diagnostics sit on top (evaluate/grad_norms.py trains models: a tool, like bench).
LAYERS = [
    ("foundation", ("mae_jax", "mae_jax.errors", "mae_jax.cpu_env", "mae_jax.config_util",
                    "mae_jax.parallel", "mae_jax.optim", "mae_jax.checkpoint",
                    "mae_jax.workdir_lock", "mae_jax.preemption", "mae_jax.progress",
                    "mae_jax.kernels")),
    ("data and models", ("mae_jax.data", "mae_jax.models", "mae_jax.simulation")),
    ("evaluation", ("mae_jax.evaluate",)),
    ("tasks", ("mae_jax.tasks",)),
    ("builders", ("mae_jax.experiment",)),
    ("loop", ("mae_jax.trainer",)),
    ("tools", ("mae_jax.main", "mae_jax.protocol", "mae_jax.export", "mae_jax.bench",
               "mae_jax.compare", "mae_jax.evaluate.grad_norms")),
]
ALLOWED_CIRCLES = [{"mae_jax.data.convert", "mae_jax.data.beam_convert"}]


def layer(module):
  best, level = "", None
  for i, (_, prefixes) in enumerate(LAYERS):
    for p in prefixes:
      if (module == p or module.startswith(p + ".")) and len(p) > len(best):
        best, level = p, i
  assert level is not None, f"{module} is in no layer of tests/test_imports.py"
  return level


def import_graph():
  graph = {}
  base = os.path.join(ROOT, "mae_jax")
  for dirpath, _, files in os.walk(base):
    for f in files:
      if not f.endswith(".py"):
        continue
      path = os.path.join(dirpath, f)
      mod = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".").removesuffix(".__init__")
      deps = set()
      for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
          deps |= {a.name for a in node.names if a.name.startswith("mae_jax")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mae_jax"):
          for a in node.names:  # `from mae_jax.x import y`: y is a module or a name in x
            sub = f"{node.module}.{a.name}"
            is_mod = (os.path.exists(os.path.join(ROOT, *sub.split(".")) + ".py")
                      or os.path.isdir(os.path.join(ROOT, *sub.split("."))))
            deps.add(sub if is_mod else node.module)
      graph[mod] = deps - {mod}
  return graph


def test_no_module_imports_a_higher_layer():
  graph = import_graph()
  upward = [f"{m} -> {d}" for m, deps in graph.items() for d in deps
            if d in graph and layer(d) > layer(m) and not m.startswith(d + ".")]
  assert not upward, upward


def test_the_only_import_circle_is_the_optional_beam_one():
  graph = import_graph()
  index, low, stack, on_stack, circles = {}, {}, [], set(), []

  def visit(v):  # Tarjan's strongly connected components
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in graph.get(v, ()):
      if w not in graph or w.startswith(v + ".") or v.startswith(w + "."):
        continue  # a package and its own submodules are not a circle
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = set()
      while True:
        w = stack.pop()
        on_stack.discard(w)
        comp.add(w)
        if w == v:
          break
      if len(comp) > 1:
        circles.append(comp)

  for v in sorted(graph):
    if v not in index:
      visit(v)
  assert [c for c in circles if c not in ALLOWED_CIRCLES] == [], circles
  assert graph["mae_jax.evaluate.plots"].isdisjoint({"mae_jax.trainer", "mae_jax.experiment"})
