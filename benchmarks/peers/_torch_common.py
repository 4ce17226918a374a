"""awt's benchmark networks, PGD and PGD-AT step in PyTorch: the peers.

The networks mirror awt's; ``pgd_linf`` is awt's PGD; ``train_runner`` and
``pgd_eval_runner`` build the measured work as ``benchmarks/_jax.py`` does
for awt (``benchmarks._common.Runner``), on the same inputs
(``benchmarks._common.TASKS``), with either attack of ``ATTACKS``: ``hand``
(``pgd_linf``) or ``torchattacks`` (``torchattacks.PGD``, what PyTorch users
run; the ``bench`` extra installs it). Each network mirrors the awt registry
model of the same name (``awt/models``): the same layers, widths, kernel
sizes, paddings, strides and biases, so the parameter counts are equal
(``tests/test_benchmarks.py`` checks this). Inputs are NCHW, PyTorch's
default layout. Initialization is PyTorch's default: it does not change the
cost.
"""

import os
import time
from collections.abc import Callable

import torch
from torch import nn

from benchmarks import _common
from benchmarks._common import Runner


def mlp(num_classes: int = 10) -> nn.Module:
  """LeNet-300-100 (awt ``mlp``): 784-300-100-classes with ReLUs."""
  return nn.Sequential(
    nn.Flatten(),
    nn.Linear(784, 300),
    nn.ReLU(),
    nn.Linear(300, 100),
    nn.ReLU(),
    nn.Linear(100, num_classes),
  )


def lenet5(num_classes: int = 10) -> nn.Module:
  """LeNet-5 (awt ``lenet5``): 5x5 convs 6 ('SAME') and 16, fc 120-84."""
  return nn.Sequential(
    nn.Conv2d(1, 6, 5, padding=2),
    nn.ReLU(),
    nn.MaxPool2d(2),
    nn.Conv2d(6, 16, 5),
    nn.ReLU(),
    nn.MaxPool2d(2),
    nn.Flatten(),
    nn.Linear(400, 120),
    nn.ReLU(),
    nn.Linear(120, 84),
    nn.ReLU(),
    nn.Linear(84, num_classes),
  )


def conv4(num_classes: int = 10) -> nn.Module:
  """Conv-4 (awt ``conv4``): 3x3 convs 64-64-pool-128-128-pool, fc 256-256."""
  layers, cin = [], 3
  for i, cout in enumerate((64, 64, 128, 128)):
    layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU()]
    if i % 2:
      layers.append(nn.MaxPool2d(2))
    cin = cout
  return nn.Sequential(
    *layers,
    nn.Flatten(),
    nn.Linear(128 * 8 * 8, 256),
    nn.ReLU(),
    nn.Linear(256, 256),
    nn.ReLU(),
    nn.Linear(256, num_classes),
  )


class _BasicBlock(nn.Module):
  """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), as awt's."""

  def __init__(self, cin: int, cout: int, stride: int):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(cout)
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(cout)
    self.shortcut = nn.Sequential()
    if stride != 1 or cin != cout:
      self.shortcut = nn.Sequential(
        nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
      )

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y = torch.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return torch.relu(y + self.shortcut(x))


class _ResNet18(nn.Module):
  """CIFAR ResNet-18 (awt ``resnet18``): 3x3 stem, 4 stages of 2 blocks."""

  def __init__(self, num_classes: int = 10, width: int = 64):
    super().__init__()
    self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    blocks, cin = [], width
    for stage in range(4):
      cout = width * 2**stage
      for block in range(2):
        stride = 2 if stage > 0 and block == 0 else 1
        blocks.append(_BasicBlock(cin, cout, stride))
        cin = cout
    self.blocks = nn.Sequential(*blocks)
    self.head = nn.Linear(cin, num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    h = self.blocks(torch.relu(self.bn1(self.conv1(x))))
    return self.head(torch.mean(h, dim=(2, 3)))


def resnet18(num_classes: int = 10) -> nn.Module:
  """CIFAR ResNet-18 (awt ``resnet18``), 11,173,962 parameters."""
  return _ResNet18(num_classes)


MODELS = {"mlp": mlp, "lenet5": lenet5, "conv4": conv4, "resnet18": resnet18}


def get(name: str, num_classes: int = 10) -> nn.Module:
  """The network ``name`` (a key of ``MODELS``).

  Raises:
    ValueError: for an unknown name, listing the known ones.
  """
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
  return MODELS[name](num_classes)


def pgd_linf(
  model: nn.Module,
  x: torch.Tensor,
  y: torch.Tensor,
  *,
  eps: float,
  step_size: float,
  steps: int,
  delta: torch.Tensor | None = None,
  select: str = "last",
  autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
  """l_inf PGD as awt's ``attacks.pgd``: random start, sign steps, project.

  The loss is the summed cross-entropy (per-example gradients, as awt's);
  ``x^{t+1} = clip_[0,1](clip_[x-eps, x+eps](x^t + alpha sign(grad)))``.
  ``select="last"`` returns the last iterate (adversarial training);
  ``"best"`` returns per example the first iterate that is misclassified,
  else the one of highest loss, over every iterate and the final point (awt's
  evaluation PGD).

  Args:
    model: the network (its mode decides BatchNorm's behaviour), on
      ``x``'s device.
    x: [B, C, H, W] in [0, 1], on the CPU or a GPU.
    y: [B] int64 labels.
    eps, step_size, steps: budget, alpha, k.
    delta: the random start's offset [B, C, H, W]; None draws it uniformly
      in [-eps, eps].
    select: "last" or "best".
    autocast_dtype: run the forward passes under ``torch.autocast`` with
      this dtype (bf16 mixed precision), or None.

  Returns:
    x_adv [B, C, H, W], detached.
  """
  if delta is None:
    delta = torch.empty_like(x).uniform_(-eps, eps)
  x_adv = torch.clamp(x + delta, 0.0, 1.0)
  best_x = x_adv.clone()
  best_loss = torch.full((x.shape[0],), -torch.inf, device=x.device)
  fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)

  def loss_and_logits(v):
    with torch.autocast(
      x.device.type,
      dtype=autocast_dtype or torch.bfloat16,
      enabled=autocast_dtype is not None,
    ):
      logits = model(v)
    logits = logits.float()
    losses = nn.functional.cross_entropy(logits, y, reduction="none")
    return losses, logits

  def track(v, losses, logits):
    # awt.attacks._common.update_best: first success, else highest loss.
    wrong = torch.argmax(logits, -1) != y
    take = ~fooled & (wrong | (losses.detach() > best_loss))
    best_loss.copy_(torch.where(take, losses.detach(), best_loss))
    best_x[take] = v.detach()[take]
    fooled.logical_or_(wrong)

  for _ in range(steps):
    x_adv.requires_grad_(True)
    losses, logits = loss_and_logits(x_adv)
    (grad,) = torch.autograd.grad(losses.sum(), x_adv)
    if select == "best":
      track(x_adv, losses, logits)
    x_adv = x_adv.detach() + step_size * torch.sign(grad)
    x_adv = torch.clamp(torch.min(torch.max(x_adv, x - eps), x + eps), 0, 1)
  if select == "best":
    with torch.no_grad():
      losses, logits = loss_and_logits(x_adv)
    track(x_adv, losses, logits)
    return best_x
  return x_adv.detach()


ATTACKS = ("hand", "torchattacks")


def torchattacks_pgd(
  model: nn.Module, *, eps: float, step_size: float, steps: int
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
  """``torchattacks.PGD``: l_inf PGD as PyTorch users run it.

  A uniform random start, ``steps`` sign steps of ``step_size`` on the mean
  cross-entropy, projection to the eps-ball and [0, 1]; it returns the last
  iterate. By default torchattacks switches the model to ``eval()`` for the
  attack and back afterwards: BatchNorm and dropout would behave as in
  evaluation (mlp, lenet5 and conv4 have neither, in awt and here).

  Args:
    model: the network.
    eps, step_size, steps: budget, alpha, k.

  Returns:
    The attack: ``(x [B, C, H, W] in [0, 1], y [B] int64) -> x_adv``.

  Raises:
    ImportError: torchattacks is not installed (one line).
  """
  try:
    import torchattacks  # noqa: PLC0415 (optional: the torchattacks peer)
  except ImportError as e:
    raise ImportError(
      f"torchattacks is not importable ({e}); pip install -e '.[bench]'"
    ) from None
  return torchattacks.PGD(
    model, eps=eps, alpha=step_size, steps=steps, random_start=True
  )


def _check_attack(attack: str) -> None:
  if attack not in ATTACKS:
    raise ValueError(f"unknown attack {attack!r}; known: {', '.join(ATTACKS)}")


DEVICES = ("auto", "cpu", "cuda")
# torch.compile's modes; those in CUDA_GRAPH_MODES replay CUDA graphs on a
# GPU (one launch per captured graph instead of per kernel).
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
COMPILE_MODES = ("default", *CUDA_GRAPH_MODES, "max-autotune-no-cudagraphs")


def resolve_device(name: str) -> torch.device:
  """The torch device ``name`` means here.

  Args:
    name: one of ``DEVICES``; ``"auto"`` is the GPU when torch sees one
      (``torch.cuda.is_available()``), else the CPU.

  Returns:
    ``torch.device("cuda")`` or ``torch.device("cpu")``.

  Raises:
    ValueError: an unknown name, or ``"cuda"`` where torch sees no GPU (one
      line, with the torch build: a CPU wheel has no CUDA).
  """
  if name not in DEVICES:
    raise ValueError(f"unknown device {name!r}; known: {', '.join(DEVICES)}")
  cuda = torch.cuda.is_available()
  if name == "cuda" and not cuda:
    raise ValueError(
      f"--device=cuda, but torch {torch.__version__} sees no GPU "
      f"(CUDA build: {torch.version.cuda or 'none'})"
    )
  return torch.device(
    "cuda" if name == "cuda" or (name == "auto" and cuda) else "cpu"
  )


def _placed(
  model_name: str, batch: int, *, seed: int, device: str, channels_last: bool
) -> tuple[nn.Module, torch.Tensor]:
  """The network and a random batch [B, C, H, W] in [0, 1] on ``device``.

  ``torch.manual_seed(seed)`` draws the weights, then the batch, on the CPU
  (every device gets the same ones); both are moved to
  ``resolve_device(device)``, in channels-last memory order if asked (NHWC
  strides for the same NCHW shapes: cuDNN's and oneDNN's preferred layout
  for convolutions, above all under bf16).
  """
  dev = resolve_device(device)
  torch.manual_seed(seed)
  (h, w, c), _ = _common.TASKS[model_name]
  fmt = torch.channels_last if channels_last else torch.contiguous_format
  net = get(model_name, _common.NUM_CLASSES).to(dev, memory_format=fmt)
  x = torch.rand(batch, c, h, w).to(dev).contiguous(memory_format=fmt)
  return net, x


def _synchronized(call: Callable[[], None], device) -> Callable[[], None]:
  """``call``, then a wait for the GPU's queue, so that timing a call times
  its kernels (CUDA runs them asynchronously); on the CPU ``call`` itself."""
  if device.type != "cuda":
    return call

  def synced():
    call()
    torch.cuda.synchronize(device)

  return synced


def setup_threads(threads: int) -> int:
  """Sets torch's intra-op threads (0: all cores); returns the number."""
  threads = threads or os.cpu_count()
  torch.set_num_threads(threads)
  return threads


def warm_up(runner_call: Callable[[], None], compiled: bool) -> float:
  """Runs two warm-up calls and returns their wall seconds.

  With torch.compile the first call compiles; the two calls' time
  (compilation plus two runs) is what the records report as ``compile_s``.

  Raises:
    RuntimeError: torch.compile failed, with its first line.
  """
  start = time.perf_counter()
  try:
    runner_call()
    runner_call()
  except Exception as e:  # inductor raises many types; report one line.
    if not compiled:
      raise
    msg = str(e).strip().splitlines()
    raise RuntimeError(
      f"torch.compile failed: {type(e).__name__}: {msg[0] if msg else ''}"
    ) from e
  return time.perf_counter() - start


def train_runner(
  model_name: str,
  *,
  batch: int,
  steps: int,
  dtype: str = "float32",
  compiled: bool = False,
  attack: str = "hand",
  seed: int = 0,
  device: str = "cpu",
  channels_last: bool = False,
  compile_mode: str = "default",
) -> Runner:
  """Builds the PyTorch PGD-k training step on random data; a Runner.

  The attack on the batch, then ``zero_grad``, the cross-entropy of the
  adversarial batch, ``backward`` and one SGD step.

  Args:
    model_name: a key of ``benchmarks._common.TASKS``.
    batch: images per step B.
    steps: PGD steps k.
    dtype: "float32", or "bfloat16" for autocast forward passes.
    compiled: wrap the network in ``torch.compile``.
    attack: "hand" (:func:`pgd_linf`, in train mode as awt's step) or
      "torchattacks" (:func:`torchattacks_pgd`; it runs the network in eval
      mode, the same computation for networks without BatchNorm or dropout).
    seed: ``torch.manual_seed`` of the weights and inputs (drawn on the
      CPU, so every device gets the same ones).
    device: one of ``DEVICES`` (:func:`resolve_device`).
    channels_last: keep the network's weights and the batch in
      channels-last memory order.
    compile_mode: one of ``COMPILE_MODES``, torch.compile's ``mode`` when
      ``compiled``. With CUDA graphs (``CUDA_GRAPH_MODES``) each step
      starts with ``torch.compiler.cudagraph_mark_step_begin``, the
      documented marker of a training iteration.

  Returns:
    The Runner, ``compile_s`` 0: :func:`warm_up` measures torch.compile's
    lazy compilation on the first calls. A call ends when the GPU has
    finished it. ``info`` has ``mode`` ("eager", "compile" or
    "compile:<compile_mode>"), ``attack``, ``device`` and ``channels_last``.

  Raises:
    ImportError: ``attack="torchattacks"`` without torchattacks.
    ValueError: an unknown ``compile_mode``.
  """
  _check_attack(attack)
  if compile_mode not in COMPILE_MODES:
    raise ValueError(
      f"unknown compile mode {compile_mode!r}; "
      f"known: {', '.join(COMPILE_MODES)}"
    )
  net, x = _placed(
    model_name, batch, seed=seed, device=device, channels_last=channels_last
  )
  dev, eps = x.device, _common.TASKS[model_name][1]
  net.train()
  opt = torch.optim.SGD(
    net.parameters(), lr=_common.LEARNING_RATE, momentum=_common.MOMENTUM
  )
  mode = None if compile_mode == "default" else compile_mode
  fwd = torch.compile(net, mode=mode) if compiled else net
  graphs = compiled and compile_mode in CUDA_GRAPH_MODES
  y = torch.randint(0, _common.NUM_CLASSES, (batch,)).to(dev)
  autocast = torch.bfloat16 if dtype == "bfloat16" else None
  step_size = _common.STEP_SIZE_FACTOR * eps / steps
  budget = dict(eps=eps, step_size=step_size, steps=steps)
  if attack == "torchattacks":
    pgd = torchattacks_pgd(fwd, **budget)

    def adversary():
      with torch.autocast(
        dev.type, dtype=torch.bfloat16, enabled=bool(autocast)
      ):
        return pgd(x, y)

  else:
    adversary = lambda: pgd_linf(fwd, x, y, **budget, autocast_dtype=autocast)

  def call():
    if graphs:
      torch.compiler.cudagraph_mark_step_begin()
    x_adv = adversary()
    opt.zero_grad(set_to_none=True)
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bool(autocast)):
      logits = fwd(x_adv)
    loss = torch.nn.functional.cross_entropy(logits.float(), y)
    loss.backward()
    opt.step()

  return Runner(
    call=_synchronized(call, dev),
    images_per_call=batch,
    compile_s=0.0,
    info=_info(net, compiled, attack, dev, channels_last, compile_mode),
  )


def _info(
  net, compiled, attack, device, channels_last, compile_mode="default"
) -> dict:
  mode = "eager"
  if compiled:
    mode = "compile" if compile_mode == "default" else f"compile:{compile_mode}"
  return {
    "mode": mode,
    "attack": attack,
    "params": sum(p.numel() for p in net.parameters()),
    "device": device.type,
    "channels_last": channels_last,
  }


def pgd_eval_runner(
  model_name: str,
  *,
  batch: int,
  steps: int,
  compiled: bool = False,
  attack: str = "hand",
  seed: int = 0,
  device: str = "cpu",
  channels_last: bool = False,
) -> Runner:
  """Builds PGD-``steps`` evaluation on random data, the network in eval mode.

  Args:
    model_name: a key of ``benchmarks._common.TASKS``.
    batch: images per call.
    steps: PGD steps.
    compiled: wrap the network in ``torch.compile``.
    attack: "hand" (:func:`pgd_linf` with ``select="best"``, awt's
      evaluation PGD: per example the first fooling iterate, else the one
      of highest loss, over the iterates and the final point) or
      "torchattacks" (:func:`torchattacks_pgd`): the last iterate, so it
      does slightly less work than awt's: no best-iterate bookkeeping per
      step and no forward pass at the final point.
    seed: ``torch.manual_seed`` of the weights, inputs and random starts.
    device, channels_last: as in :func:`train_runner`.

  Returns:
    The Runner (``compile_s`` 0; see ``warm_up``); ``info`` as
    :func:`train_runner`'s.

  Raises:
    ImportError: ``attack="torchattacks"`` without torchattacks.
  """
  _check_attack(attack)
  net, x = _placed(
    model_name, batch, seed=seed, device=device, channels_last=channels_last
  )
  dev, eps = x.device, _common.TASKS[model_name][1]
  net.eval()
  fwd = torch.compile(net) if compiled else net
  with torch.no_grad():
    y = torch.argmax(net(x), -1)
  step_size = _common.STEP_SIZE_FACTOR * eps / steps
  budget = dict(eps=eps, step_size=step_size, steps=steps)
  if attack == "torchattacks":
    pgd = torchattacks_pgd(fwd, **budget)
    call = lambda: pgd(x, y)
  else:
    call = lambda: pgd_linf(fwd, x, y, **budget, select="best")

  return Runner(
    call=_synchronized(call, dev),
    images_per_call=batch,
    compile_s=0.0,
    info=_info(net, compiled, attack, dev, channels_last),
  )


def matmul_gflop_per_s(
  shape: tuple[int, int, int] = (1024, 1024, 1024),
  warmup: int = 3,
  repeats: int = 10,
  dtype: str = "float32",
  device: str = "cpu",
) -> float:
  """The machine's matmul rate under torch: ``torch.mm`` [m, k] [k, n].

  Args:
    shape: ``(m, k, n)``.
    warmup: untimed calls.
    repeats: timed calls.
    dtype: "float32" or "bfloat16", the operands' type.
    device: one of ``DEVICES``.

  Returns:
    ``2 m k n`` over the fastest timed call's seconds, in GFLOP/s, with
    torch's current intra-op threads (``setup_threads``) on the CPU. On a
    GPU float32 products run as torch's defaults say
    (``torch.backends.cuda.matmul.allow_tf32``, off unless set).
  """
  m, k, n = shape
  dev = resolve_device(device)
  gen = torch.Generator().manual_seed(0)
  a, b = (
    torch.randn(*s, generator=gen).to(dev, getattr(torch, dtype))
    for s in ((m, k), (k, n))
  )
  return _common.best_gflop_per_s(
    _synchronized(lambda: torch.mm(a, b), dev), 2 * m * k * n, warmup, repeats
  )


def versions() -> dict:
  """torch's version, intra-op threads and OpenMP wait policy (records).

  ``OMP_WAIT_POLICY`` matters on a shared machine: with the default (active)
  policy torch's OpenMP threads spin at every barrier, and when other jobs
  hold the cores a small network's step gets many times slower;
  ``OMP_WAIT_POLICY=PASSIVE`` makes them sleep instead. Where torch sees a
  GPU: its name and whether float32 matrix products and convolutions may
  run in TF32 (``allow_tf32``; JAX's default float32 precision on a GPU
  may use it too) and whether cuDNN picks its algorithms by timing them
  (``cudnn.benchmark``).
  """
  out = {
    "torch": torch.__version__,
    "threads": torch.get_num_threads(),
    "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
  }
  if torch.cuda.is_available():
    out.update(
      gpu=torch.cuda.get_device_name(),
      tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
      tf32_cudnn=torch.backends.cudnn.allow_tf32,
      cudnn_benchmark=torch.backends.cudnn.benchmark,
    )
  return out


def measure(
  runner: Runner,
  *,
  compiled: bool,
  repeats: int,
  log: Callable[[str], None],
  **record_kw,
) -> dict:
  """Warms a runner up, times it and returns its JSON record.

  A torch.compile failure gives a record with ``"error"`` instead of times.
  """
  load_before = _common.load_average()
  log(f"{record_kw['model']}: warming up ({runner.info['mode']})")
  try:
    warm_s = warm_up(runner.call, compiled)
  except RuntimeError as e:
    return _common.record(
      runner,
      [],
      framework="torch",
      load_before=load_before,
      error=str(e),
      **record_kw,
      **versions(),
    )
  runner.compile_s = warm_s if compiled else 0.0
  log(f"{record_kw['model']}: timing {repeats} calls")
  times = _common.time_calls(runner.call, repeats)
  return _common.record(
    runner,
    times,
    framework="torch",
    load_before=load_before,
    **record_kw,
    **versions(),
  )
