"""The layer-by-layer NTK of an MLP (``profile_awt``'s proposal), flag-free
so tests can import it without defining a benchmark's absl flags."""

import jax
import jax.numpy as jnp

from awt.models._common import flatten


def dense_layerwise_ntk(model, params, x1, x2):
  r"""The ``[n1, n2, C, C]`` empirical NTK of an ``awt.models.MLP``, by layer.

  For a Dense layer :math:`z_l = a_l W_l + b_l` the Jacobian of logit
  :math:`c` in :math:`W_l` is :math:`a_l \otimes \delta_{l,c}`,
  :math:`\delta_{l,c} = \partial f_c / \partial z_l`, so

  .. math::
    \Theta_{ij,cd} = \sum_l (a_l(x_i) \cdot a_l(x_j) + 1)
      (\delta_{l,c}(x_i) \cdot \delta_{l,d}(x_j))

  (the 1: the bias) — the structured form of Novak et al. (ICML 2022),
  which neural-tangents' ``STRUCTURED_DERIVATIVES`` computes in general
  and which fails on this JAX (``awt/_nt.py``). :math:`\delta` is
  back-propagated in closed form (``C`` rows per point), so no ``P``-sized
  Jacobian is formed: ``O(n C P)`` for the deltas plus
  ``O(n^2 C^2 \sum_l d_l)`` for the Gram products, against ``O(n^2 C P)``.

  Args:
    model: an ``awt.models.MLP`` (Dense layers ``fc1``.., ``head``, ReLU).
    params: its parameters.
    x1: ``[n1, H, W, C]``; x2: ``[n2, H, W, C]``.

  Returns:
    ``[n1, n2, K, K]`` float32, equal to ``ntk_of(..., "cross_full")``.

  References:
    Novak, Sohl-Dickstein & Schoenholz, "Fast Finite Width Neural Tangent
    Kernel", ICML 2022, Section 3 (structured derivatives).
  """
  names = [f"fc{i + 1}" for i in range(len(model.widths))] + ["head"]

  def features(x):
    h = flatten(
      model.apply({"params": params}, x, method=lambda m, x: m.normalize(x))
    )
    acts, gates = [], []
    for i, name in enumerate(names):
      acts.append(h)
      z = h @ params[name]["kernel"] + params[name]["bias"][None, :]
      if i < len(names) - 1:
        gates.append((z > 0).astype(z.dtype))
        h = jax.nn.relu(z)
    k = z.shape[-1]
    delta = jnp.broadcast_to(jnp.eye(k, dtype=z.dtype), (z.shape[0], k, k))
    deltas = [delta]
    for i in range(len(names) - 2, -1, -1):
      w = params[names[i + 1]]["kernel"]
      delta = jnp.einsum("bck,jk->bcj", delta, w) * gates[i][:, None, :]
      deltas.insert(0, delta)
    return acts, deltas

  (a1, d1), (a2, d2) = features(x1), features(x2)
  kernel = 0.0
  for a, b, p, q in zip(a1, a2, d1, d2, strict=True):
    gram = a @ b.T + 1.0
    kernel = kernel + gram[:, :, None, None] * jnp.einsum("icz,jdz->ijcd", p, q)
  return kernel
