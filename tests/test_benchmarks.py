"""Smoke tests of the benchmarks, and that the PyTorch peers do awt's work.

Speed is never asserted (docs/design.md: measured by benchmarks, not in
timed tests);
these check that the scripts run and print valid JSON, and that the peers
measure the same networks and the same PGD as awt (against awt itself on
shared weights and random starts). The torch tests need the ``bench``
extra and are skipped without it.
"""

import json

import _binary  # tests/_binary.py: the one subprocess runner
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from awt import attacks, models
from benchmarks import _common

DIGITS_TRAIN = 1437  # bundled digits' training split
BATCH = 128  # digits_mlp's batch size


def _run(module, *args):
  proc = _binary.run(module, *args, devices=None)  # one CPU device
  assert proc.returncode == 0, proc.stderr[-3000:]
  return [json.loads(line) for line in proc.stdout.splitlines()]


def _lenet300_params() -> int:
  """LeNet-300-100's parameter count on 28x28 inputs, by hand."""
  return 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10


@pytest.mark.slow
@pytest.mark.parametrize("scan_length", [0, 2])
def test_train_step_prints_one_json_record(scan_length):
  (rec,) = _run(
    "benchmarks.train_step",
    "--model=mlp",
    "--batch=4",
    "--steps=1",
    "--repeats=2",
    f"--scan_length={scan_length}",
  )
  assert rec["benchmark"] == "train_step" and rec["framework"] == "jax"
  assert rec["input_shape"] == [4, 28, 28, 1]
  assert rec["params"] == _lenet300_params()
  assert rec["mode"] == (f"scan{scan_length}" if scan_length else "step")
  assert rec["repeats"] == 2
  assert rec["min_s"] <= rec["median_s"] <= rec["max_s"]
  per_call = 4 * max(scan_length, 1)
  assert rec["images_per_s"] == pytest.approx(
    per_call / rec["median_s"], rel=1e-3
  )
  assert rec["compile_s"] > 0


def test_train_step_rejects_an_unknown_model_in_one_line():
  proc = _binary.run("benchmarks.train_step", "--model=mpl", devices=None)
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines() == [
    "error: unknown model 'mpl'; known: mlp, lenet5, conv4, resnet18"
  ]


@pytest.mark.slow
def test_matmul_worker_reports_a_rate_per_shape_and_rejects_bad_shapes():
  shapes = ["4x3x2", "16x8x4"]
  (rates,) = _run(
    "benchmarks.matmul",
    "--worker=jax",
    f"--shapes={','.join(shapes)}",
    "--convs=6x2x3",
    "--repeats=2",
  )
  assert sorted(rates) == sorted([*shapes, "conv:6x2x3"])
  assert all(v > 0 for v in rates.values() if not isinstance(v, list))
  assert len(rates["conv:6x2x3"]) == 2 and min(rates["conv:6x2x3"]) > 0
  for flag, form in (
    ("--shapes=8x8", "MxKxN"),
    ("--convs=8x0x2", "HxCINxCOUT"),
  ):
    proc = _binary.run("benchmarks.matmul", flag, devices=None)
    assert proc.returncode == 1
    bad = flag.split("=")[1]
    assert proc.stderr.strip().splitlines() == [
      f"error: bad shape '{bad}': want {form} of positive integers"
    ]


@pytest.mark.slow
def test_seeds_times_each_program_in_alternation():
  (rec,) = _run(
    "benchmarks.seeds",
    "--seeds=2",
    "--epochs=1",
    "--programs=vmap",
    "--programs=loop",
    "--rounds=2",
  )
  assert rec["benchmark"] == "seeds" and rec["model"] == "mlp"
  assert list(rec["wall_s"]) == ["vmap", "loop"]
  assert all(len(t) == 2 and min(t) > 0 for t in rec["wall_s"].values())
  assert min(rec["over_fastest"].values()) == 1.0


@pytest.mark.slow
def test_ticket_cost_prints_costs_and_the_ratio():
  recs = _run(
    "benchmarks.ticket_cost",
    "--methods=awt,imp",
    "--num_epochs=1",
    "--awt_steps=2",
    "--imp_rounds=1",
  )
  assert [r["benchmark"] for r in recs] == [
    "ticket_cost",
    "ticket_cost",
    "ticket_cost_ratio",
  ]
  awt, imp, ratio = recs
  for r in (awt, imp):
    assert r["sparsity"] == pytest.approx(0.95, abs=1e-5)
    assert r["wall_time_s"] > 0
  # One round of one epoch of PGD-10 training: 11 steps of k + 1 passes.
  assert imp["passes"] == (DIGITS_TRAIN // BATCH) * (10 + 1)
  assert ratio["awt_over_imp_wall_time"] == pytest.approx(
    awt["wall_time_s"] / imp["wall_time_s"], rel=1e-3
  )
  assert ratio["target_met"] == (ratio["awt_over_imp_wall_time"] <= 0.2)


@pytest.mark.slow  # five processes (each cell runs in its own): ~20 s of CPU
def test_ntk_reports_time_memory_and_the_auto_choice():
  """Blocked kernel (n=5 in blocks of 2) timed, then compile-only."""
  common = [
    "benchmarks.ntk",
    "--models=mlp",
    "--sizes=5",
    "--kinds=empirical",
    "--batch_size=2",
  ]
  ran = _run(*common)
  assert [r["implementation"] for r in ran] == [
    "jacobian_contraction",
    "ntk_vector_products",
  ]
  for r in ran:
    assert "error" not in r, r
    assert r["median_s"] > 0 and r["repeats"] == 1
    assert r["peak_bytes"] > r["baseline_rss_bytes"] > 0
    assert r["xla_bytes"] >= r["xla_temp_bytes"] > 0
    assert r["auto_choice"] in ("jacobian_contraction", "ntk_vector_products")
    assert set(r["auto_costs"]) >= {"jacobian_contraction"}
  (compiled,) = _run(*common, "--implementations=auto", "--noexecute")
  assert compiled["median_s"] is None and compiled["repeats"] == 0
  assert compiled["peak_bytes"] is None and compiled["xla_bytes"] > 0


def test_mlp_train_step_flops_are_the_dense_layers_closed_form():
  """The runner's jaxpr count of a PGD-2 step of LeNet-300-100: matrix
  products as derived by hand, the loop counted twice, XLA's once."""
  from benchmarks import _jax

  b, k = 4, 2
  # XLA's products: its cost analysis does not see dense_impl="mkl"'s
  # custom calls (the jaxpr count does: tests/test_cpu_gemm.py).
  runner = _jax.train_runner("mlp", batch=b, steps=k, dense_impl="xla")
  layers = [(784, 300), (300, 100), (100, 10)]
  forward = sum(2 * b * i * o for i, o in layers)
  # Each PGD step: forward + input gradient (every layer's g W^T). The
  # update: forward + weight gradients (all layers) + input gradients of
  # every layer but the first (the attacked images are constants).
  pgd_step = 2 * forward
  update = 2 * forward + sum(2 * b * i * o for i, o in layers[1:])
  info = runner.info
  assert info["matmul_flops_per_call"] == k * pgd_step + update
  elementwise = info["flops_per_call"] - info["matmul_flops_per_call"]
  assert 0 < elementwise < 0.25 * info["matmul_flops_per_call"]
  # XLA's cost analysis counts the fori_loop's body once: about one PGD
  # step fewer than the jaxpr count.
  missing = info["flops_per_call"] - info["xla_flops_per_call"]
  assert missing == pytest.approx(pgd_step, rel=0.25)
  runner.call()  # the count did not consume the donated state


def test_fastest_peer_takes_each_pairs_fastest():
  ours = [100.0, 90.0, 120.0]
  peers = {"torch-eager": [50.0, 60.0, 40.0], "torch-x": [80.0, 45.0, 40.0]}
  out = _common.fastest_peer(ours, peers)
  assert out["fastest_peers"] == ["torch-x", "torch-eager", "torch-eager"]
  assert out["peer_images_per_s"] == [80.0, 60.0, 40.0]
  assert out["ratios"] == [1.25, 1.5, 3.0]
  assert (out["ratio_min"], out["ratio_median"], out["ratio_max"]) == (
    1.25,
    1.5,
    3.0,
  )
  with pytest.raises(ValueError):
    _common.fastest_peer(ours, {})


def test_tasks_are_registry_models():
  for name, (shape, eps) in _common.TASKS.items():
    assert name in models.names()
    assert len(shape) == 3 and 0 < eps < 1


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_conv_grad_custom_vjp_is_the_autodiff_gradient(padding):
  """The flipped-kernel input gradient benchmarks/conv_grad.py times is the
  transpose of the convolution: equal to autodiff's, and the filter
  gradient is untouched."""
  from benchmarks import conv_grad

  kx, kw, kg = jax.random.split(jax.random.PRNGKey(1), 3)
  x = jax.random.uniform(kx, (2, 9, 9, 3))
  w = jax.random.normal(kw, (5, 5, 3, 4))
  fast = conv_grad.conv_fast_input_grad(padding)
  out, vjp = jax.vjp(lambda a, b: conv_grad.conv(a, b, padding), x, w)
  g = jax.random.normal(kg, out.shape)
  ref_gx, ref_gw = vjp(g)
  gx, gw = jax.vjp(fast, x, w)[1](g)
  np.testing.assert_allclose(gx, ref_gx, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(gw, ref_gw, rtol=1e-5, atol=1e-5)
  rec = conv_grad.measure("lenet5/conv2", batch=2, iterations=2, repeats=1)
  assert rec["grad_rel_diff"] < 1e-4


def test_conv_backend_records_both_libraries_and_rejects_bad_convs():
  """Tiny shapes: every variant gives the first one's numbers, and on
  XLA:CPU only the untouched forward is a YNNPACK fusion."""
  fwd, kgrad = _run(
    "benchmarks.conv_backend",
    "--convs=8x24x20",
    "--kernel_grads=6x20x8",
    "--batch=3",
    "--rounds=1",
    "--repeats=1",
  )
  assert fwd["kind"] == "forward" and kgrad["kind"] == "kernel_grad"
  assert fwd["eigen"]["rel_diff"] < 1e-5 and fwd["speedup"] > 0
  if fwd["ynnpack"]["ynn_fusions"]:
    assert fwd["eigen"]["ynn_fusions"] == 0
  assert set(kgrad) >= {"autodiff", "dots", "chunked"}
  assert kgrad["dots"]["rel_diff"] < 1e-5
  assert kgrad["chunked"]["rel_diff"] < 1e-5
  proc = _binary.run("benchmarks.conv_backend", "--convs=8x24", devices=None)
  assert proc.returncode != 0
  assert "bad conv '8x24'" in proc.stderr.strip().splitlines()[-1]


# ---------------------------------------------------------------- PyTorch


@pytest.fixture(scope="module")
def torch_common():
  pytest.importorskip("torch")
  from benchmarks.peers import _torch_common

  return _torch_common


@pytest.mark.parametrize("name", list(_common.TASKS))
def test_torch_networks_have_awt_sizes(torch_common, name):
  shape = _common.TASKS[name][0]
  model = models.get(name, _common.NUM_CLASSES)
  variables = jax.eval_shape(
    lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, *shape)))
  )
  ours = sum(
    int(np.prod(v.shape)) for v in jax.tree.leaves(variables["params"])
  )
  net = torch_common.get(name, _common.NUM_CLASSES)
  theirs = sum(p.numel() for p in net.parameters())
  assert theirs == ours
  import torch

  h, w, c = shape
  assert net.eval()(torch.zeros(2, c, h, w)).shape == (2, _common.NUM_CLASSES)


@pytest.mark.parametrize("select", ["last", "best"])
def test_torch_pgd_is_awt_pgd(torch_common, select):
  """Same weights, same random start: the same iterates, up to sign flips
  of gradient entries that are zero up to float rounding."""
  import torch

  model = models.get("mlp", _common.NUM_CLASSES)
  key = jax.random.PRNGKey(0)
  k_init, k_x, k_attack = jax.random.split(key, 3)
  shape = _common.TASKS["mlp"][0]
  variables = model.init(k_init, jnp.zeros((1, *shape)))
  x = jax.random.uniform(k_x, (16, *shape))
  y = jnp.arange(16) % _common.NUM_CLASSES
  keys = jax.random.split(k_attack, 16)
  f = lambda v: model.apply(variables, v)
  kw = dict(eps=0.1, step_size=0.02, norm="linf")
  pgd = jax.jit(
    attacks.pgd,
    static_argnums=0,
    static_argnames=("steps", "select", "eps", "step_size", "norm"),
  )
  start = pgd(f, x, y, keys, steps=0, select="last", **kw)
  ours = pgd(f, x, y, keys, steps=5, select=select, **kw)

  net = torch_common.get("mlp", _common.NUM_CLASSES).eval()
  p = variables["params"]
  linears = [m for m in net if isinstance(m, torch.nn.Linear)]
  with torch.no_grad():
    for lin, name in zip(linears, ("fc1", "fc2", "head"), strict=True):
      lin.weight.copy_(torch.from_numpy(np.array(p[name]["kernel"]).T))
      lin.bias.copy_(torch.from_numpy(np.array(p[name]["bias"])))
  to_torch = lambda a: torch.from_numpy(np.array(a)).permute(0, 3, 1, 2)
  tx, tstart = to_torch(x), to_torch(start)
  theirs = torch_common.pgd_linf(
    net,
    tx,
    torch.from_numpy(np.array(y)).long(),
    eps=0.1,
    step_size=0.02,
    steps=5,
    delta=tstart - tx,
    select=select,
  )
  theirs = theirs.permute(0, 2, 3, 1).numpy()
  ours = np.asarray(ours)
  assert np.mean(np.isclose(theirs, ours, atol=1e-6)) >= 0.99
  assert np.max(np.abs(theirs - np.asarray(x))) <= 0.1 + 1e-6
  assert not np.allclose(ours, np.asarray(start))  # the attack moved


@pytest.fixture(scope="module")
def torchattacks_pgd(torch_common):
  pytest.importorskip("torchattacks")
  return torch_common.torchattacks_pgd


def test_torchattacks_pgd_is_the_hand_written_last_iterate(
  torch_common, torchattacks_pgd
):
  """From the same random start (same torch seed), torchattacks.PGD takes
  pgd_linf(select="last")'s steps, up to sign flips of gradient entries
  that are zero up to float rounding (its loss is the mean, ours the sum)."""
  import torch

  net = torch_common.get("mlp", _common.NUM_CLASSES).eval()
  x = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))
  y = torch.arange(16) % _common.NUM_CLASSES
  kw = dict(eps=0.1, step_size=0.02, steps=5)
  torch.manual_seed(0)
  theirs = torchattacks_pgd(net, **kw)(x, y).numpy()
  torch.manual_seed(0)
  ours = torch_common.pgd_linf(net, x, y, **kw).numpy()
  assert np.mean(np.isclose(theirs, ours, atol=1e-6)) >= 0.99
  assert np.max(np.abs(theirs - x.numpy())) <= 0.1 + 1e-6
  assert not np.allclose(theirs, x.numpy())


@pytest.mark.parametrize("kind", ["train_step", "pgd_eval"])
def test_torch_runners_run_either_attack(torch_common, torchattacks_pgd, kind):
  build = {
    "train_step": torch_common.train_runner,
    "pgd_eval": torch_common.pgd_eval_runner,
  }[kind]
  for attack in torch_common.ATTACKS:
    runner = build("mlp", batch=4, steps=1, attack=attack)
    runner.call()
    assert runner.info["attack"] == attack
  with pytest.raises(ValueError, match="unknown attack"):
    build("mlp", batch=4, steps=1, attack="foolbox")


def test_torch_train_runner_names_its_compile_mode(torch_common):
  """A mode other than torch.compile's default is named in ``info``; an
  unknown one ends before any work."""
  with pytest.raises(ValueError, match="unknown compile mode 'fast'; known: "):
    torch_common.train_runner(
      "mlp", batch=4, steps=1, compiled=True, compile_mode="fast"
    )
  eager = torch_common.train_runner("mlp", batch=4, steps=1)
  assert eager.info["mode"] == "eager"


@pytest.mark.slow
def test_torch_train_runner_compiles_in_a_cuda_graph_mode(torch_common):
  """``reduce-overhead`` (CUDA graphs on a GPU; plain inductor on a CPU)
  compiles and runs the step, and says so in ``info``."""
  runner = torch_common.train_runner(
    "mlp", batch=4, steps=1, compiled=True, compile_mode="reduce-overhead"
  )
  assert torch_common.warm_up(runner.call, compiled=True) > 0
  assert runner.info["mode"] == "compile:reduce-overhead"


@pytest.mark.slow
def test_compare_prints_a_ratio_per_peer_and_against_the_fastest(
  torchattacks_pgd,
):
  *peers, fastest = _run(
    "benchmarks.compare",
    "--tasks=train_step:mlp",
    "--peers=eager,torchattacks",
    "--pairs=2",
    "--block_s=0.1",
    "--settle_s=0",
    "--batch=4",
    "--at_steps=1",
  )
  assert [r["peer"] for r in peers] == ["torch-eager", "torch-torchattacks"]
  assert [r["attack"] for r in peers] == ["hand", "torchattacks"]
  for rec in peers:
    assert rec["ours"] == "jax-step" and len(rec["ratios"]) == 2
    for r, a, b in zip(
      rec["ratios"],
      rec["ours_images_per_s"],
      rec["peer_images_per_s"],
      strict=True,
    ):
      assert r == pytest.approx(a / b, rel=1e-2)
    assert rec["ratio_min"] <= rec["ratio_median"] <= rec["ratio_max"]
    assert rec["matmul_gflop_per_s"] > 0 and rec["peer_matmul_gflop_per_s"] > 0
  assert fastest["peer"] == "fastest"
  for i in range(2):
    best = max(peers, key=lambda r: r["peer_images_per_s"][i])
    assert fastest["fastest_peers"][i] == best["peer"]
    assert fastest["peer_images_per_s"][i] == best["peer_images_per_s"][i]
  for rec in (*peers, fastest):
    per_image = rec["flops_per_call"] / rec["images_per_call"]
    xla_per_image = rec["xla_flops_per_call"] / rec["images_per_call"]
    for name, flops in (
      ("ours", per_image),
      ("xla_cost", xla_per_image),
      ("peer", per_image),
    ):
      side = "peer" if name == "peer" else "ours"
      expected = [flops * v / 1e9 for v in rec[f"{side}_images_per_s"]]
      np.testing.assert_allclose(
        rec[f"{name}_gflop_per_s"], expected, rtol=1e-2
      )


def test_torch_runners_place_the_work_and_name_the_device(torch_common):
  """``channels_last`` keeps the weights and the batch in NHWC strides and
  computes the same step; ``device`` resolves to the CPU here unless torch
  sees a GPU, and ``"cuda"`` without one ends in one line."""
  import torch

  runner = torch_common.train_runner(
    "lenet5", batch=4, steps=1, device="cpu", channels_last=True
  )
  runner.call()
  assert runner.info["device"] == "cpu" and runner.info["channels_last"]
  net, x = torch_common._placed(
    "lenet5", 2, seed=0, device="cpu", channels_last=True
  )
  assert x.is_contiguous(memory_format=torch.channels_last)
  conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
  assert conv.weight.is_contiguous(memory_format=torch.channels_last)
  plain = torch_common.get("lenet5")
  plain.load_state_dict(net.state_dict())
  torch.testing.assert_close(net(x), plain(x.contiguous()))
  evaluation = torch_common.pgd_eval_runner("mlp", batch=4, steps=1)
  evaluation.call()
  assert evaluation.info["channels_last"] is False
  cuda = torch.cuda.is_available()
  assert torch_common.resolve_device("auto").type == ("cuda" if cuda else "cpu")
  with pytest.raises(ValueError, match="unknown device 'tpu'"):
    torch_common.resolve_device("tpu")
  if not cuda:
    with pytest.raises(ValueError, match="sees no GPU"):
      torch_common.train_runner("mlp", batch=4, steps=1, device="cuda")


def test_matmul_rates_in_either_dtype(torch_common):
  from benchmarks import _jax

  for dtype in ("float32", "bfloat16"):
    assert _jax.matmul_gflop_per_s((8, 8, 8), 1, 2, dtype=dtype) > 0
    assert torch_common.matmul_gflop_per_s((8, 8, 8), 1, 2, dtype=dtype) > 0
  assert _common.peak_shape("cpu") == (1024,) * 3
  assert _common.peak_shape("cuda") == _common.peak_shape("gpu") == (8192,) * 3


def _step_record(framework, ips, **extra):
  return {
    "benchmark": "train_step",
    "framework": framework,
    "model": "resnet18",
    "dtype": "bfloat16",
    "input_shape": [128, 32, 32, 3],
    "images_per_s": ips,
    **extra,
  }


def test_step_table_rates_each_peer_against_awt_flops(tmp_path):
  from benchmarks import step_table

  records = [
    _step_record("jax", 100.0, flops_per_call=2.56e12, matmul_gflop_per_s=1e4),
    _step_record("jax", 1000.0, flops_per_call=2.56e12, matmul_gflop_per_s=1e5),
    _step_record("torch", 400.0, mode="eager", matmul_gflop_per_s=8e4),
    _step_record("torch", 500.0, mode="eager", channels_last=True),
    {**_step_record("torch", 0.0, mode="compile"), "error": "no triton"},
    {**_step_record("torch", 300.0, mode="eager"), "dtype": "float32"},
  ]
  del records[-2]["images_per_s"]
  path = tmp_path / "steps.jsonl"
  path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
  labels, rows = step_table.rows(_common.read_records([str(path)]))
  assert labels == ["eager", "eager+channels_last", "compile"]
  (model, dtype, ips, gflops, frac, theirs, ratio), fp32 = rows
  # The later awt record counts: 2.56 TFLOP per 128 images at 1000 img/s.
  assert (model, dtype, ips) == ("resnet18", "bfloat16", 1000.0)
  assert gflops == pytest.approx(2e4) and frac == pytest.approx(0.2)
  assert theirs["eager"] == pytest.approx((400.0, 8e3, 0.1))
  assert theirs["eager+channels_last"][2] is None  # no --peak
  assert theirs["compile"] == ("no triton", None, None)
  assert ratio == pytest.approx(2.0)
  # A dtype awt has no record of keeps its torch numbers, without FLOP/s.
  assert fp32[:5] == ["resnet18", "float32", None, None, None]
  assert fp32[5] == {"eager": (300.0, None, None)} and fp32[6] is None
  table = step_table.markdown(labels, rows).splitlines()
  assert len(table) == 4 and "no triton" in table[2] and "| 2 |" in table[2]
  assert table[3].startswith("| resnet18 | float32 | – (–, –) | 300 (–, –) |")
  (tmp_path / "bad.jsonl").write_text("{}\nnot json\n")
  with pytest.raises(ValueError, match="bad.jsonl:2: not JSON"):
    _common.read_records([str(tmp_path / "bad.jsonl")])


def _compare_record(task, peer, ratios, **extra):
  """A ``benchmarks.compare`` record with per-pair fields of 2 pairs."""
  return {
    "benchmark": "compare",
    "task": task,
    "model": "mlp",
    "peer": peer,
    "ratio_median": sum(ratios) / 2,
    "ratio_min": min(ratios),
    "ratio_max": max(ratios),
    "ours_images_per_s": [8000.0, 10000.0],
    "ours_gflop_per_s": [80.0, 100.0],
    "peer_gflop_per_s": [50.0, 62.5],
    "matmul_gflop_per_s": 200.0,
    "peer_matmul_gflop_per_s": 150.0,
    **extra,
  }


def test_compare_table_reads_each_task_against_the_fastest_peer():
  from benchmarks import compare_table

  records = [
    _compare_record("train_step", "torch-eager", [1.0, 2.0]),
    {
      "benchmark": "compare",
      "task": "train_step",
      "model": "mlp",
      "peer": "torch-compile",
      "error": "no triton",
    },
    _compare_record(
      "train_step", "torch-eager", [1.6, 1.6], peer_matmul_gflop_per_s=180.0
    ),
    _compare_record("train_step", "fastest", [1.5, 1.7]),
    _compare_record("pgd_eval", "torch-eager", [2.0, 2.0]),
    _compare_record("pgd_eval", "fastest", [2.0, 2.0]),
    {"benchmark": "train_step", "framework": "jax"},  # not compare's: skipped
    {
      "benchmark": "compare",
      "task": "pgd_eval",
      "model": "lenet5",
      "peer": "fastest",
      "error": "no peer ran",
    },
  ]
  peers, rows = compare_table.rows(records)
  assert peers == ["torch-eager", "torch-compile"]
  step, one_value, no_peer = rows
  # The later eager record replaces the earlier one; a failed peer is named.
  assert step == [
    "train_step:mlp",
    "**1.60** (1.50–1.70)",
    {"torch-eager": "1.60", "torch-compile": "failed"},
    "8,000–10,000",
    "80–100",
    "50–62.5",
    "200 / 180",
  ]
  # A range of one value prints once; a task no peer ran says so.
  assert one_value[1] == "**2.00**"
  assert one_value[2] == {"torch-eager": "2.00"}
  assert one_value[3:] == ["8,000–10,000", "80–100", "50–62.5", "200 / 150"]
  assert no_peer[:2] == ["pgd_eval:lenet5", "no peer ran"]
  table = compare_table.markdown(peers, rows).splitlines()
  assert table[0].startswith("| task | awt / fastest peer | eager | compile |")
  assert table[2].startswith("| train_step:mlp | **1.60** (1.50–1.70) | 1.60 |")
  assert table[3].startswith("| pgd_eval:mlp | **2.00** | 2.00 | – |")
  assert table[4] == "| pgd_eval:lenet5 | no peer ran | – | – | – | – | – | – |"


def test_compare_table_names_each_machine_once():
  from benchmarks import compare_table

  xeon = {
    "cpu": "Intel(R) Xeon(R) Processor",
    "cpu_id": "family 6 model 167",
    "num_cpu": 2,
    "jax": "0.10.2",
    "dense_impl": "mkl",
    "torch": "2.14.1",
    "threads": 2,
  }
  records = [
    _compare_record("train_step", "torch-eager", [1.0], **xeon),
    # compare's summary has no torch fields: the same machine, one line.
    _compare_record(
      "train_step", "fastest", [1.0], **{k: xeon[k] for k in list(xeon)[:5]}
    ),
    _compare_record("pgd_eval", "fastest", [1.0], cpu="EPYC", jax="0.11.0"),
    _compare_record("pgd_eval", "torch-eager", [1.0]),  # an old record
  ]
  assert compare_table.machines(records) == [
    "Machine: Intel(R) Xeon(R) Processor (family 6 model 167), 2 CPUs;"
    " jax 0.10.2 (dense_impl mkl); torch 2.14.1, 2 threads",
    "Machine: EPYC; jax 0.11.0",
  ]


def test_machine_names_the_cpu_family_and_model(monkeypatch):
  import io

  cpuinfo = (
    "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\n"
    "model\t\t: 167\nmodel name\t: Intel(R) Xeon(R) Processor\n"
    "processor\t: 1\ncpu family\t: 6\nmodel\t\t: 99\n"
  )
  monkeypatch.setattr(
    _common, "open", lambda path: io.StringIO(cpuinfo), raising=False
  )
  m = _common.machine()
  # The first processor's fields; "model name" is not taken for "model".
  assert m["cpu"] == "Intel(R) Xeon(R) Processor"
  assert m["cpu_id"] == "family 6 model 167"
  monkeypatch.setattr(
    _common, "open", lambda path: io.StringIO(""), raising=False
  )
  assert "cpu_id" not in _common.machine()


@pytest.mark.parametrize("n", [1, 5, 6, 7, 15, 30, 37, 100])
def test_median_interval_is_the_widest_exact_order_statistic_interval(n):
  from scipy import stats

  from benchmarks import compare_pool

  ranks = compare_pool.median_interval(n)
  # Coverage of [x_(k), x_(n+1-k)] for a continuous distribution's median,
  # from scipy's binomial: 1 - 2 P(B <= k - 1), B ~ Binomial(n, 1/2).
  cover = lambda k: 1 - 2 * stats.binom.cdf(k - 1, n, 0.5)
  if ranks is None:
    assert cover(1) < 0.95
    return
  k, upper = ranks
  assert upper == n + 1 - k and 1 <= k <= upper
  assert cover(k) >= 0.95 and (k + 1 > upper - 1 or cover(k + 1) < 0.95)


def test_median_interval_covers_the_median_as_often_as_it_claims():
  from benchmarks import compare_pool

  # 20,000 samples of 15 uniforms (median 0.5): the empirical coverage of
  # the (4, 12) interval is its exact 0.965 within sampling error (sd 0.0013).
  n = 15
  k, upper = compare_pool.median_interval(n)
  x = np.sort(np.random.default_rng(0).uniform(size=(20_000, n)), axis=1)
  hit = (x[:, k - 1] <= 0.5) & (0.5 <= x[:, upper - 1])
  assert (k, upper) == (4, 12) and abs(hit.mean() - 0.9648) < 0.006


def test_compare_pool_pools_each_tasks_pairs_over_runs():
  from benchmarks import compare_pool

  machine = {
    "cpu": "Intel(R) Xeon(R) Processor",
    "cpu_id": "family 6 model 167",
  }
  run = lambda task, ratios: {
    "benchmark": "compare",
    "task": task,
    "model": "mlp",
    "peer": "fastest",
    "ratios": ratios,
    "ratio_median": float(np.median(ratios)),
    **machine,
  }
  first = [1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8]
  second = [1.40, 1.42, 1.44, 1.46, 1.48, 1.52, 1.54]
  records = [
    run("train_step", first),
    _compare_record("train_step", "torch-eager", [1.0, 2.0]),  # not pooled
    run("pgd_eval", [0.9, 1.1, 1.2]),
    run("train_step", second),
  ]
  cpu, rows = compare_pool.pool(records)
  assert cpu == "Intel(R) Xeon(R) Processor (family 6 model 167)"
  step, evaluation = rows
  # 14 pairs: median (1.46 + 1.48) / 2; the 95% interval is ranks 3 and
  # 12 of the sorted pairs (1.40 and 1.60).
  assert step == [
    "train_step:mlp",
    "2",
    "14",
    "**1.47** [1.40, 1.60]",
    "1.46–1.50",
    "14 of 14",
    "6 of 14",
  ]
  # Three pairs are too few for a 95% interval; one run prints one median.
  assert evaluation == [
    "pgd_eval:mlp",
    "1",
    "3",
    "**1.10**",
    "1.10",
    "2 of 3",
    "0 of 3",
  ]
  table = compare_pool.markdown(rows).splitlines()
  assert table[0] == (
    "| task | runs | pairs | median [95% CI] | runs' medians | ≥ 1.0 | ≥ 1.5 |"
  )
  other = {**run("train_step", first), "cpu_id": "family 25 model 17"}
  with pytest.raises(ValueError, match="records of 2 CPUs"):
    compare_pool.pool(records + [other])
  with pytest.raises(ValueError, match="no benchmarks.compare record"):
    compare_pool.pool(
      [_compare_record("train_step", "torch-eager", [1.0, 2.0])]
    )


def test_turn_medians_gives_one_median_per_round():
  # Two rounds of three calls: medians 2 and 10, whatever the order.
  assert _common.turn_medians([3.0, 1.0, 2.0, 10.0, 30.0, 5.0], 3) == [2, 10]
  assert _common.turn_medians([4.0, 6.0], 1) == [4.0, 6.0]
