"""Plots: which layers each pruning method thins, and the study helpers.

Matplotlib with the Agg backend (no display), imported lazily so that
``import awt`` does not load it: ``pyplot()`` gives ``matplotlib.pyplot``
with that backend, ``save(fig, path)`` writes and closes a figure. The
studies (``awt.studies``) draw their figures with these two.
"""

import os
import re
from collections.abc import Mapping

DPI = 110  # every PNG the project writes


def pyplot():
  """``matplotlib.pyplot`` on the Agg backend (imported on first use)."""
  import matplotlib  # noqa: PLC0415 (lazy: only binaries plot)

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415

  return plt


def wrap(label: str, width: int = 36) -> str:
  """``label`` on several lines, broken after ``,``, ``;`` or ``:``.

  A sweep's method variants (``"awt:awt_output_points=clean,scope=..."``)
  make legend entries long enough to squeeze the axes to nothing.

  Examples:
    >>> print(wrap("snip:scope=layerwise,layer_densities=conv1=0.14", 24))
    snip:scope=layerwise,
    layer_densities=conv1=0.14
  """
  lines = [""]
  for part in re.split(r"(?<=[,;:])", label):
    if lines[-1] and len(lines[-1]) + len(part) > width:
      lines.append("")
    lines[-1] += part
  return "\n".join(lines)


def save(fig, path: str) -> None:
  """Lays out ``fig``, writes it to the PNG ``path`` and closes it.

  ``path``'s directory is created.
  """
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=DPI)
  pyplot().close(fig)


def plot_layer_densities(
  densities: Mapping[str, Mapping[str, float]], path: str, title: str = ""
) -> None:
  """Grouped bar chart of per-layer densities, one bar per method, to a PNG.

  Frankle et al. (ICLR 2021, Sec. 5) found that pruning-at-init methods
  mostly choose layer densities; this plot shows those choices side by side.

  Args:
    densities: method (or ticket label) -> ``{layer name: fraction of its
      weights kept}``, e.g. ``awt.masks.layer_densities(mask)``. Layers are
      plotted in the order they first appear; a method without a layer gets
      no bar there.
    path: the PNG to write; its directory is created.
    title: figure title.
  """
  plt = pyplot()
  layers = list(dict.fromkeys(k for d in densities.values() for k in d))
  methods = list(densities)
  width = 0.8 / max(len(methods), 1)
  fig, ax = plt.subplots(
    figsize=(max(4.0, 1.0 + 0.9 * len(layers) * max(1, len(methods)) / 3), 3.6)
  )
  for i, method in enumerate(methods):
    xs = [j for j, layer in enumerate(layers) if layer in densities[method]]
    ys = [densities[method][layers[j]] for j in xs]
    offset = (i - (len(methods) - 1) / 2) * width
    ax.bar([x + offset for x in xs], ys, width, label=wrap(method))
  ax.set_xticks(range(len(layers)))
  ax.set_xticklabels(layers, rotation=30, ha="right", fontsize=8)
  ax.set_ylabel("fraction of weights kept")
  ax.set_ylim(0, 1.05)
  ax.grid(axis="y", alpha=0.3)
  if methods:
    ax.legend(fontsize=8)
  ax.set_title(title, fontsize=10)
  save(fig, path)
