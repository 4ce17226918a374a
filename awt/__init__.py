"""awt: adversarial winning tickets — sparse networks and robustness in JAX.

``import awt`` never imports TensorFlow: the TFDS loaders import it lazily,
and ``awt._nt`` keeps neural-tangents' TensorFlow-only module out.
"""

from awt import (
  attacks,
  checkpoints,
  curves,
  data,
  evaluation,
  masks,
  models,
  probes,
  training,
)

__all__ = [
  "attacks",
  "checkpoints",
  "curves",
  "data",
  "evaluation",
  "masks",
  "models",
  "probes",
  "training",
]
__version__ = "0.1.0"
