"""The package's architecture, checked: layers, one-way imports, re-export-only ``__init__`` files, keyword-built
records with documented fields, and one definition of each shared contract."""

import ast
import dataclasses
import os
import typing

import jax
import numpy as np
import pytest
from meshes import trainer

ROOT = os.path.join(os.path.dirname(__file__), "..", "jaxgrpo")
# Bottom layer first: a module may import from its own layer or a lower one, never a higher one.
LAYERS = {"core": 0, "kernels": 1, "parallel": 1, "models": 2, "tasks": 3, "rollout": 4, "train": 5, "analysis": 6,
          "cli": 7}


def modules() -> dict[str, str]:
  """Every module of the package: dotted name → path."""
  out = {}
  for d, _, files in os.walk(ROOT):
    for f in files:
      if f.endswith(".py"):
        rel = os.path.relpath(os.path.join(d, f), os.path.dirname(ROOT))[:-3].split(os.sep)
        out[".".join(rel[:-1] if rel[-1] == "__init__" else rel)] = os.path.join(d, f)
  return out


def imports_of(source: str, name: str, known: set[str]) -> set[str]:
  """The jaxgrpo modules a module's source imports anywhere (top level or inside functions)."""
  out = set()
  package = name if name in known and name.count(".") < 1 else name.rsplit(".", 1)[0]
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names if a.name.split(".")[0] == "jaxgrpo")
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
      if base.split(".")[0] != "jaxgrpo":
        continue
      for a in node.names:  # "from pkg import sub" imports the submodule when there is one
        out.add(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base)
  return out


def layer(module: str) -> int | None:
  """The layer of a module (None for the top-level package, ``jaxgrpo`` itself)."""
  parts = module.split(".")
  return None if len(parts) == 1 else LAYERS[parts[1]]


def violations(graph: dict[str, set[str]]) -> list[str]:
  """Imports that go up a layer, that import the top-level package from inside, or that leave ``core``."""
  bad = []
  for mod, deps in graph.items():
    for dep in deps:
      if layer(mod) is None:  # the top-level package re-exports the core only
        if dep.split(".")[1] != "core":
          bad.append(f"{mod} -> {dep}")
      elif layer(dep) is None and layer(mod) < LAYERS["cli"]:
        bad.append(f"{mod} -> {dep} (the package itself)")
      elif layer(dep) is not None and layer(dep) > layer(mod):
        bad.append(f"{mod} -> {dep} (layer {layer(dep)} above {layer(mod)})")
  return sorted(bad)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Import cycles among modules (depth-first search)."""
  found, state, stack = [], {}, []

  def visit(m):
    state[m] = 1
    stack.append(m)
    for d in sorted(graph.get(m, ())):
      if state.get(d) == 1:
        found.append(stack[stack.index(d):] + [d])
      elif d not in state:
        visit(d)
    stack.pop()
    state[m] = 2

  for m in sorted(graph):
    if m not in state:
      visit(m)
  return found


def import_graph() -> dict[str, set[str]]:
  mods = modules()
  return {m: imports_of(open(p).read(), m, set(mods)) - {m} for m, p in mods.items()}


def test_every_module_belongs_to_a_layer():
  mods = modules()
  assert {m.split(".")[1] for m in mods if "." in m} == set(LAYERS)
  flat = [m for m in mods if m.count(".") == 1 and m != "jaxgrpo.cli" and os.path.basename(mods[m]) != "__init__.py"]
  assert not flat, f"modules outside the layer packages: {flat}"


def test_no_module_imports_a_layer_above_its_own_and_there_are_no_cycles():
  graph = import_graph()
  assert violations(graph) == []
  assert cycles(graph) == []
  core_deps = {d for m, deps in graph.items() if m.startswith("jaxgrpo.core") for d in deps}
  assert all(d.startswith("jaxgrpo.core") for d in core_deps)


def test_the_layer_checker_finds_what_it_should():
  """The checker itself, on a made-up package: upward imports (also inside functions), the package imported from
  inside, relative imports and cycles are all reported."""
  known = {"jaxgrpo", "jaxgrpo.core.a", "jaxgrpo.models.b", "jaxgrpo.train.c", "jaxgrpo.train.d"}
  up = imports_of("def f():\n  from jaxgrpo.train import c\n", "jaxgrpo.models.b", known)
  assert up == {"jaxgrpo.train.c"}
  rel = imports_of("from . import d\nfrom .c import x\n", "jaxgrpo.train.c", known)
  assert rel == {"jaxgrpo.train.d", "jaxgrpo.train.c"}
  graph = {"jaxgrpo.models.b": up, "jaxgrpo.core.a": {"jaxgrpo"}, "jaxgrpo.train.c": {"jaxgrpo.train.d"},
           "jaxgrpo.train.d": {"jaxgrpo.train.c"}}
  assert violations(graph) == ["jaxgrpo.core.a -> jaxgrpo (the package itself)",
                               "jaxgrpo.models.b -> jaxgrpo.train.c (layer 5 above 2)"]
  assert cycles(graph) == [["jaxgrpo.train.c", "jaxgrpo.train.d", "jaxgrpo.train.c"]]


def test_init_files_only_re_export():
  for name, path in modules().items():
    if os.path.basename(path) != "__init__.py":
      continue
    body = ast.parse(open(path).read()).body
    for node in body:
      doc = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
      names = [t.id for t in node.targets] if isinstance(node, ast.Assign) else []
      assert doc or isinstance(node, (ast.Import, ast.ImportFrom)) or names in (["__all__"], ["__version__"]), (
          f"{path}:{node.lineno}: an __init__ only re-exports (docstring, imports, __all__)")


# ----------------------------------------------------------------------------- records


def _records():
  from jaxgrpo.models.transformer import Output
  from jaxgrpo.rollout.engine import Rollout
  from jaxgrpo.rollout.sampler import DecodeState, SamplingParams
  from jaxgrpo.train.step import Batch, LossSpec, UpdateSpec

  return [Batch, Rollout, DecodeState, Output, SamplingParams, LossSpec, UpdateSpec]


@pytest.mark.parametrize("record", _records(), ids=lambda r: r.__name__)
def test_records_are_built_by_keyword_only(record):
  n = len(dataclasses.fields(record))
  with pytest.raises(TypeError):
    record(*([None] * n))


def _field_comments(cls) -> dict[str, str]:
  """field name → its comment (the trailing ``#`` comment, or the comment lines just above it)."""
  import inspect

  lines = inspect.getsource(cls).splitlines()
  out = {}
  for i, line in enumerate(lines):
    s = line.strip()
    for f in dataclasses.fields(cls):
      if s.startswith(f"{f.name}:"):
        above = []
        j = i - 1
        while j >= 0 and lines[j].strip().startswith("#"):
          above.insert(0, lines[j].strip("# "))
          j -= 1
        out[f.name] = (line.split("#", 1)[1] if "#" in line else "") + " ".join(above)
  return out


@pytest.mark.parametrize("record", ["Batch", "Rollout", "DecodeState", "Output"])
def test_array_records_document_every_field_with_its_shape(record):
  cls = {r.__name__: r for r in _records()}[record]
  comments = _field_comments(cls)
  arrays = [f.name for f in dataclasses.fields(cls) if "Array" in str(f.type)]
  assert arrays
  for name in arrays:
    assert "[" in comments.get(name, ""), f"{record}.{name}: say its shape (and dtype) in a comment"


def test_every_config_field_is_commented():
  from jaxgrpo.train import config

  specs = [v for v in vars(config).values() if isinstance(v, type) and dataclasses.is_dataclass(v)
           and v.__module__ == config.__name__]
  assert len(specs) == 11
  for spec in specs:
    comments = _field_comments(spec)
    nested = {f.name for f in dataclasses.fields(spec) if dataclasses.is_dataclass(typing.get_type_hints(spec)[f.name])}
    for f in dataclasses.fields(spec):
      assert f.name in nested or comments.get(f.name, "").strip(), f"{spec.__name__}.{f.name} needs a comment"


def test_enum_choices_are_declared_once():
  """The config's choices are the implementing modules' own (adding one there adds it to the config)."""
  from jaxgrpo.core import objectives, prpo
  from jaxgrpo.models import config as model_config
  from jaxgrpo.tasks import sources
  from jaxgrpo.train import config

  hints = {cls: typing.get_type_hints(cls) for cls in (config.ObjectiveSpec, config.ModelSpec, config.DataSpec)}
  assert hints[config.ObjectiveSpec]["aggregation"] is objectives.Aggregation
  assert typing.get_args(objectives.Aggregation) == objectives.AGGREGATIONS
  assert hints[config.ObjectiveSpec]["prpo_normalization"] is prpo.Normalization
  assert hints[config.ObjectiveSpec]["prpo_outcome"] is prpo.Outcome
  assert hints[config.ModelSpec]["family"] is model_config.Family
  assert hints[config.DataSpec]["source"] is sources.SourceName


# ----------------------------------------------------------------------------- one definition each


def test_the_sampler_and_the_config_share_one_set_of_sampling_rules():
  from jaxgrpo.rollout.sampler import SamplingParams
  from jaxgrpo.train.config import SamplingSpec

  for field, bad in (("group_size", 0), ("max_new_tokens", 0), ("temperature", -1.0), ("top_k", -1),
                     ("top_p", 0.0)):
    with pytest.raises(ValueError, match=f"^{field} must be") as direct:
      SamplingParams(**{field: bad})
    with pytest.raises(ValueError, match=f"^config key 'sampling.{field}' must be") as from_config:
      SamplingSpec(**{field: bad})
    assert str(direct.value).split(" must be ")[1] == str(from_config.value).split(" must be ")[1]


def test_every_sampling_option_decides_whether_the_sampler_is_the_policy():
  """A sampling option added to the sampler, the engine or the config without an entry in
  ``models.policy.SAMPLING_OPTIONS`` fails here (and refuses to build an update spec)."""
  from jaxgrpo.models import policy
  from jaxgrpo.rollout import engine
  from jaxgrpo.rollout.sampler import SamplingParams
  from jaxgrpo.train.config import SamplingSpec

  options = {f.name for f in dataclasses.fields(SamplingParams)} | set(engine.ENGINE_OPTIONS) | {"dtype"}
  assert options == set(policy.SAMPLING_OPTIONS)
  assert {f.name for f in dataclasses.fields(SamplingSpec)} <= options
  base = dataclasses.asdict(SamplingSpec())
  assert policy.old_logp_source(1, base) == "none"
  assert policy.old_logp_source(4, base) == "batch"
  assert policy.old_logp_source(4, base, recompute=True) == "recompute"
  assert policy.old_logp_source(4, {**base, "top_k": 5}) == "recompute"
  assert policy.old_logp_source(4, {**base, "top_p": 0.9}) == "recompute"
  assert policy.old_logp_source(4, {**base, "temperature": 0.7}) == "batch"  # part of the policy
  assert policy.old_logp_source(4, {**base, "dtype": "bfloat16"}) == "recompute"  # a bf16 sampler
  with pytest.raises(ValueError, match=r"sampling option\(s\) \['min_p'\] are not decided"):
    policy.old_logp_source(4, {**base, "min_p": 0.1})


def test_allowed_tokens_have_one_form():
  from jaxgrpo.models import policy
  from jaxgrpo.tasks.sources import ToyTokenizer
  from jaxgrpo.train import build, config

  assert policy.allowed_ids(np.array([False, True, True]), 3) == (1, 2) == policy.allowed_ids([2, 1, 2], 3)
  assert policy.allowed_ids(None, 3) is None
  np.testing.assert_array_equal(policy.allowed_mask(3, (1, 2)), [False, True, True])
  assert build.tokenizer_class(config.ModelSpec()).allowed_ids == ToyTokenizer().allowed_ids == (1, 2)
  with pytest.raises(ValueError, match=r"allowed_tokens holds ids \[3\] outside the vocabulary \[0, 3\)"):
    policy.allowed_ids([1, 3], 3)
  with pytest.raises(ValueError, match="allows no token"):
    policy.allowed_ids(np.zeros(3, bool), 3)


def test_a_rollout_checks_its_prompts_once_and_keeps_one_mask_dtype(tmp_path, monkeypatch):
  """The engine validates prompts on the host once (no second, device→host check in the sampler), and the mask is
  int32 from the sampler to the update's batch."""
  from jaxgrpo.rollout import sampler
  from jaxgrpo.train import presets
  from jaxgrpo.train.config import replace

  calls = []
  check = sampler.validate_prompts
  monkeypatch.setattr(sampler, "validate_prompts", lambda *a: (calls.append(1), check(*a)))
  tr = trainer(replace(presets.preset("toy"), output_dir=str(tmp_path / "run"), progress=False, steps=1))
  seen = {}
  update = tr.update_fn

  def spy(state, frozen, ref, batch, orders):
    seen["batch"] = batch
    return update(state, frozen, ref, batch, orders)

  tr.update_fn = spy
  ro = tr.sample([tr.source[0]], jax.random.PRNGKey(0))
  assert len(calls) == 1 and ro.mask.dtype == np.int32
  tr.train_step()
  b = seen["batch"]
  from jaxgrpo.train.packing import PackedBatch

  assert isinstance(b, PackedBatch)  # the toy's groups share prefixes: share_prefix auto packs them
  assert b.mask.dtype == b.tokens.dtype == b.ends.dtype == b.source.dtype == b.slots.dtype == np.int32
  plain = tr.batch(tr.score(ro))
  assert plain.mask.dtype == plain.prompt_mask.dtype == np.int32
  assert b.advantages.dtype == b.weights.dtype == np.float32
