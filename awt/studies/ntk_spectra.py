r"""NTK spectra of tickets at initialization, against the dense network's.

For each pruning method and sparsity, the ticket is ``awt.tickets.find``'s
(same initialization, same keys, the configured ``pruning.ablation``
applied), and its empirical NTK on a fixed
probe of training points, clean and adversarial, is compared with the dense
network's at the same initialization: relative Frobenius distance, kernel
alignment, eigenvalues, condition number, effective rank and the overlap of
the top eigenvectors (``awt.ntk``).

The kernel of a ticket is the one that drives its training. The ticket
trains the weights its mask keeps (pruned weights and their updates are
held at zero), so with :math:`J` the Jacobian of the logits with respect to
all weights at :math:`\theta \odot m`,

.. math::
  \Theta_m(X) = J\, \mathrm{diag}(m)\, J^\top
  = \frac{\partial f(X; \theta \odot m)}{\partial \theta}
    \frac{\partial f(X; \theta \odot m)}{\partial \theta}^\top,

traced over the logits (mean over the C logits, ``[N, N]``): the kernel
the AWT search matches and ``awt.tickets.find`` reports as
``ntk_distance_at_init`` (one function computes it everywhere:
``awt.pruning.awt.masked_ntk``). The kernel with respect to all weights,
:math:`J J^\top` at the ticket's weights, is reported next to it as
``distance_all_weights`` (``ntk_distance_at_init_all_weights``).

Adversarial points are PGD points of the training attack (PGD-10 at the
evaluation eps when training is not adversarial) against the dense network
at initialization, with ``tickets.find``'s key, so every ticket is compared
on the same points and ``adversarial.distance`` at the default 64 points
equals the ticket's ``ntk_distance_at_init``.

References:
  Shi, Zheng, Ding, Gao & Zhang, "Finding Dynamics Preserving Adversarial
  Winning Tickets", AISTATS 2022 (the adversarial NTK of a ticket).
  Liu & Zenke, "Finding Trainable Sparse Networks through Neural Tangent
  Transfer", ICML 2020, Eq. (3)-(5).
  Lee et al., "Wide Neural Networks of Any Depth Evolve as Linear Models
  Under Gradient Descent", NeurIPS 2019, Eq. (9) (the kernel's spectrum
  sets the speed of each mode).
"""

import os
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from awt import attacks, experiment, masks, ntk, pruning, tickets
from awt import config as config_lib
from awt import data as data_lib
from awt.pruning import awt as pruning_awt
from awt.studies import _sweep

DENSE = "dense"
TOP_K = 10  # eigenvectors compared with the dense kernel's.


def _kernels_fn(f: Callable) -> Callable:
  """Jitted ``(params, mask, x, x_adv) -> (Θ_m(x), Θ_m(x_adv))``, [N, N].

  ``Θ_m`` is ``awt.pruning.awt.masked_ntk`` (trace over the logits) with
  the implementation ``awt.tickets.find``'s distances use.
  """

  @jax.jit
  def kernels(params, mask, x, x_adv):
    def kernel(z):
      return pruning_awt.masked_ntk(
        f,
        params,
        mask,
        z,
        kernel="trace",
        implementation=pruning_awt.DISTANCE_IMPLEMENTATION,
      )

    return kernel(x), kernel(x_adv)

  return kernels


def compare(k: jax.Array, k_dense: jax.Array, top_k: int = TOP_K) -> dict:
  """A kernel's spectrum and its comparison with the dense kernel.

  Args:
    k: ``[N, N]`` symmetric PSD kernel of a ticket.
    k_dense: ``[N, N]`` the dense network's kernel on the same points.
    top_k: eigenvectors compared, ``1 <= top_k <= N``.

  Returns:
    ``distance`` (``||K - K_dense||_F / ||K_dense||_F``), ``alignment`` and
    ``centered_alignment`` (cosines in Frobenius inner product),
    ``topk_overlap`` (mean squared cosine between the top-``top_k``
    eigenspaces), ``eigenvalues`` (``[N]``, descending), ``condition_number``
    (``inf`` if the smallest eigenvalue is not positive), ``effective_rank``
    and ``trace``, as Python floats and lists.
  """
  return {
    "distance": float(ntk.relative_distance(k, k_dense)),
    "alignment": float(ntk.alignment(k, k_dense)),
    "centered_alignment": float(ntk.alignment(k, k_dense, centered=True)),
    "topk_overlap": float(ntk.topk_eigenvector_overlap(k, k_dense, top_k)),
    "eigenvalues": np.asarray(ntk.eigenvalues(k), np.float64).tolist(),
    "condition_number": float(ntk.condition_number(k)),
    "effective_rank": float(ntk.effective_rank(k)),
    "trace": float(jnp.trace(k)),
  }


def start_function(logits, labels) -> dict:
  """Where a ticket's training starts: its function on the probe points.

  A kernel says how a network moves, not where it starts; a search can
  leave its ticket predicting against the labels (the AWT search's output
  term on PGD points does: docs/results/awt.md, "Why the searched values
  train worse").

  Args:
    logits: ``[N, C]`` the ticket's logits at its starting weights.
    labels: ``[N]`` int labels.

  Returns:
    ``accuracy`` and ``margin``: the mean over points of the true class's
    logit minus the mean of the other ``C - 1`` (0 for a function blind to
    the label, negative for one that predicts against it), as floats.
  """
  logits = np.asarray(logits, np.float64)
  n, c = logits.shape
  true = logits[np.arange(n), labels]
  others = (logits.sum(1) - true) / (c - 1)
  return {
    "accuracy": float(np.mean(logits.argmax(1) == labels)),
    "margin": float(np.mean(true - others)),
  }


def _check(methods, sparsities, num_points, num_train) -> None:
  known = pruning.names()
  for m in methods:
    if m not in known:
      raise ValueError(
        f"unknown pruning method {m!r}; known: {', '.join(known)}"
      )
  if not methods:
    raise ValueError("no pruning methods given")
  for s in sparsities:
    if not 0.0 <= s < 1.0:
      raise ValueError(f"sparsity must be in [0, 1), got {s}")
  if any(m != DENSE for m in methods) and not sparsities:
    raise ValueError("no sparsities given")
  if not 1 <= num_points <= num_train:
    raise ValueError(
      f"num_points={num_points} must be in [1, {num_train}] (the training "
      "examples)"
    )


def _cell_config(config, method: str, sparsity: float):
  changes = {"pruning.method": method, "pruning.sparsity": float(sparsity)}
  if method == DENSE:  # the reference is never ablated
    changes["pruning.ablation"] = "none"
  c = config_lib.replaced(config, changes)
  pruning.validate(c)
  return c


def spectra(
  config,
  methods: Sequence[str],
  sparsities: Sequence[float],
  *,
  num_points: int = tickets.NTK_PROBE,
  top_k: int = TOP_K,
  log: Callable[[str], None] = logging.info,
) -> dict:
  """Clean and adversarial NTK spectra of tickets, against the dense net's.

  Every (method, sparsity) ticket is ``awt.tickets.find``'s for ``config``
  with ``pruning.method`` and ``pruning.sparsity`` set; ``dense`` is the
  reference and is reported once, at sparsity 0, whether or not ``methods``
  lists it.

  Args:
    config: a run config (docs/design.md's schema); its ``seed``,
      ``pruning.{scope, keep_first, keep_last, ablation, ...}``,
      ``adversarial`` and ``eval`` are used.
    methods: pruning method names (``awt.pruning.names()``).
    sparsities: target sparsities, each in [0, 1).
    num_points: the probe: the first ``num_points`` training examples.
    top_k: eigenvectors compared with the dense kernel's (capped at
      ``num_points``).
    log: receives progress lines.

  Returns:
    A JSON-able dict: ``num_points``, ``top_k``, ``attack`` (the PGD
    settings of the adversarial points), ``seed``, ``kernel`` (a
    description), and ``tickets``: one dict per ticket, dense first, with
    ``name`` (``"snip@0.9"``), ``method``, ``ablation``,
    ``target_sparsity``, ``sparsity``, ``layer_densities``, ``passes``,
    ``find_wall_time_s``, and ``clean`` / ``adversarial``: :func:`compare`'s
    dict of the ticket's kernel ``Θ_m`` plus ``distance_all_weights`` (the
    relative distance of ``J Jᵀ`` at the ticket's weights to the dense
    kernel) and ``start`` (:func:`start_function` on those points).

  Raises:
    ValueError: an unknown method, a sparsity outside [0, 1), a bad
      ``num_points`` or a bad config (``ConfigError``), each one line.
  """
  start = time.perf_counter()
  missing = [
    k for k in ("data", "model", "adversarial", "pruning") if k not in config
  ]
  if missing:
    raise config_lib.ConfigError(
      f"config is missing {missing[0]!r}; ntk_spectra takes a run config "
      "with a pruning block, e.g. experiments/configs/digits_mlp.py"
    )
  methods, sparsities = tuple(methods), tuple(float(s) for s in sparsities)
  base = _cell_config(config, DENSE, 0.0)
  _check(
    methods, sparsities, num_points, data_lib.info(base.data.name).num_train
  )
  ablation = pruning.option(config, "ablation")
  probe = _Probe(base, num_points, min(top_k, num_points), log)
  cells = [(DENSE, 0.0)] + [
    (m, s) for s in sparsities for m in methods if m != DENSE
  ]
  rows = []
  for method, sparsity in cells:
    cell = _cell_config(config, method, sparsity)
    label = method if method == DENSE else f"{method}@{sparsity:g}"
    if cell.pruning.get("ablation", "none") != "none":
      label = f"{label}/{ablation}"
    log(f"finding the {label} ticket")
    ticket = tickets.find(
      cell,
      setup=probe.setup,
      measure_ntk=False,
      log=_sweep.every(log, 60, f"{label}: "),
    )
    rows.append(probe.row(label, ticket, sparsity))
  log(
    f"NTK spectra of {len(rows)} tickets in {time.perf_counter() - start:.1f}s"
  )
  return {
    "seed": int(base.seed),
    "dataset": probe.setup.info.name,
    "model": base.model.name,
    "num_points": int(num_points),
    "top_k": int(probe.top_k),
    "attack": {
      k: probe.attack[k] for k in ("norm", "eps", "step_size", "steps")
    },
    "kernel": (
      "empirical NTK traced over the logits (mean), [N, N], with respect to "
      "the weights the ticket trains: J diag(m) J^T; distance_all_weights: "
      "J J^T over all weights at theta*m"
    ),
    "tickets": rows,
  }


class _Probe:
  """The probe points (clean and PGD against the dense net at init) and the
  dense kernels every ticket is compared with."""

  def __init__(self, config, num_points: int, top_k: int, log):
    self.setup = tickets.load(config)
    self.top_k = top_k
    info, model = self.setup.info, self.setup.model
    params, batch_stats, keys = experiment.initialize(
      model, config.seed, info.image_shape
    )
    self.x = self.setup.dataset.train.images[:num_points].astype(np.float32)
    self.x /= 255.0
    y = self.y = self.setup.dataset.train.labels[:num_points]
    self.attack = experiment.probe_attack(config)
    f = pruning_awt.eval_logits_fn(model, batch_stats)
    # tickets.find's probe: PGD against the dense net, with its key.
    self.x_adv = attacks.pgd(
      lambda z: f(params, z),
      self.x,
      y,
      jax.random.fold_in(keys.mask, 1),
      eps=self.attack["eps"],
      step_size=self.attack["step_size"],
      steps=int(self.attack["steps"]),
      norm=self.attack["norm"],
      select="last",
    )
    self.kernels = _kernels_fn(f)
    self.ones = masks.ones(params)
    self.dense = self.kernels(params, self.ones, self.x, self.x_adv)
    a = self.attack
    log(
      f"NTK probe: {num_points} training points of {info.name}, adversarial "
      f"by PGD-{a['steps']} ({a['norm']}, eps {a['eps']}) against the dense "
      "net at init"
    )
    self.log = log

  def row(self, label: str, ticket: tickets.Ticket, sparsity: float) -> dict:
    """The ticket's spectra and distances to the dense kernels."""
    masked = self.kernels(ticket.params, ticket.mask, self.x, self.x_adv)
    all_weights = self.kernels(ticket.params, self.ones, self.x, self.x_adv)
    row = {
      "name": label,
      "method": ticket.info["method"],
      "ablation": ticket.info["ablation"],
      "target_sparsity": sparsity,
      "sparsity": masks.sparsity(ticket.mask),
      "layer_densities": masks.layer_densities(ticket.mask),
      "passes": int(ticket.info["passes"]),
      "find_wall_time_s": float(ticket.info["wall_time_s"]),
    }
    f = pruning_awt.eval_logits_fn(self.setup.model, ticket.batch_stats)
    start = masks.apply(ticket.params, ticket.mask)
    for i, (kind, x) in enumerate(
      (("clean", self.x), ("adversarial", self.x_adv))
    ):
      row[kind] = compare(masked[i], self.dense[i], self.top_k)
      row[kind]["distance_all_weights"] = float(
        ntk.relative_distance(all_weights[i], self.dense[i])
      )
      row[kind]["start"] = start_function(f(start, x), self.y)
    a, c = row["adversarial"], row["clean"]
    self.log(
      f"{label}: starts at {c['start']['accuracy']:.1%} clean accuracy "
      f"(margin {c['start']['margin']:+.2f}); sparsity "
      f"{row['sparsity']:.4f}; adversarial NTK distance "
      f"{a['distance']:.4f} (all weights {a['distance_all_weights']:.4f}), "
      f"clean {c['distance']:.4f}; alignment {a['alignment']:.4f}, "
      f"effective rank {a['effective_rank']:.2f}, condition number "
      f"{a['condition_number']:.3g}, top-{self.top_k} overlap "
      f"{a['topk_overlap']:.3f}"
    )
    return row


def plot_spectra(report: dict, path: str) -> None:
  """Spectra (log-log) and distances to the dense kernel, to a PNG.

  Panels: the clean and the adversarial NTK eigenvalues against their rank,
  one line per ticket (dense thick and black; color by method, line style
  by sparsity), and grouped bars of each ticket's relative distance to the
  dense kernel (clean, adversarial, adversarial over all weights).

  Args:
    report: :func:`spectra`'s dict.
    path: the PNG to write; its directory is created.
  """
  import matplotlib  # noqa: PLC0415 (lazy: only binaries plot)

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415

  rows = report["tickets"]
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
  tickets = [r for r in rows if r["method"] != DENSE]
  methods = list(dict.fromkeys(r["method"] for r in tickets))
  sparsities = list(dict.fromkeys(r["target_sparsity"] for r in tickets))
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  styles = ("-", "--", ":", "-.")
  for ax, kind in zip(axes[:2], ("clean", "adversarial"), strict=True):
    for r in rows:
      ev = np.asarray(r[kind]["eigenvalues"])
      rank = np.arange(1, ev.size + 1)
      keep = ev > 0  # log axes: rounding can leave tiny negative values.
      if r["method"] == DENSE:
        style = {"color": "black", "lw": 2.6, "zorder": 3}
      else:
        style = {
          "color": colors[methods.index(r["method"]) % len(colors)],
          "ls": styles[sparsities.index(r["target_sparsity"]) % len(styles)],
          "lw": 1.2,
        }
      ax.loglog(rank[keep], ev[keep], label=r["name"], **style)
    ax.set_xlabel("rank")
    ax.set_ylabel("eigenvalue")
    ax.set_title(f"{kind} NTK spectrum ({report['num_points']} points)")
    ax.grid(alpha=0.3, which="both")
  axes[0].legend(fontsize=7)
  bars = (
    ("clean", "distance", "clean"),
    ("adversarial", "distance", "adversarial"),
    ("adversarial", "distance_all_weights", "adversarial, all weights"),
  )
  width = 0.8 / len(bars)
  xs = np.arange(len(rows))
  for i, (kind, key, label) in enumerate(bars):
    values = [r[kind][key] for r in rows]
    axes[2].bar(
      xs + (i - (len(bars) - 1) / 2) * width, values, width, label=label
    )
  axes[2].set_xticks(xs)
  axes[2].set_xticklabels(
    [r["name"] for r in rows], rotation=40, ha="right", fontsize=8
  )
  axes[2].set_ylabel("||K - K_dense||_F / ||K_dense||_F")
  axes[2].set_title("NTK distance to the dense net at init")
  axes[2].grid(axis="y", alpha=0.3)
  axes[2].legend(fontsize=7)
  fig.suptitle(
    f"{report['model']} / {report['dataset']}, seed {report['seed']}, "
    f"PGD-{report['attack']['steps']} eps {report['attack']['eps']}"
  )
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)
