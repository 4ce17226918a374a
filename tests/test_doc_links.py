"""The docs' links, images and anchors resolve in a fresh clone.

Results moved between README.md and docs/results/ carry relative image
paths and in-page anchors with them; a wrong one renders as a broken
image or a dead contents entry, which no other test would notice.
"""

import os
import re

import _docs  # tests/_docs.py: the docs the doc tests read
import pytest

ROOT, DOCS = _docs.ROOT, _docs.DOCS

LINK = re.compile(r"\]\(([^)\s]+)\)")


def _anchor(heading: str) -> str:
  """GitHub's anchor of a heading: lower case, punctuation dropped, spaces
  to hyphens."""
  return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(text: str) -> set[str]:
  return {_anchor(m.group(1)) for m in re.finditer(r"^#+ (.*)$", text, re.M)}


@pytest.mark.parametrize("path", DOCS)
def test_links_and_images_resolve(path):
  with open(os.path.join(ROOT, path)) as f:
    text = f.read()
  here = os.path.dirname(os.path.join(ROOT, path))
  bad = []
  for target in LINK.findall(text):
    if re.match(r"[a-z]+:", target):
      continue  # http(s), mailto: not checked offline
    file, _, anchor = target.partition("#")
    full = os.path.normpath(os.path.join(here, file)) if file else None
    if full and not os.path.exists(full):
      bad.append(f"{target}: no such file")
    elif anchor and (full is None or full.endswith(".md")):
      with open(full or os.path.join(ROOT, path)) as f:
        if anchor not in _anchors(f.read()):
          bad.append(f"{target}: no such heading")
  assert not bad, f"{path}: " + "; ".join(bad)


def test_every_figure_is_shown_somewhere():
  texts = ""
  for path in DOCS:
    with open(os.path.join(ROOT, path)) as f:
      texts += f.read()
  unused = [
    name
    for name in sorted(os.listdir(os.path.join(ROOT, "docs", "figures")))
    if name not in texts
  ]
  assert not unused, f"figures no doc shows: {unused}"


def test_the_anchor_rule():
  assert (
    _anchor("NTT's raw ranking (mnist5k, 95%)") == "ntts-raw-ranking-mnist5k-95"
  )
  assert _anchor("Is 30 epochs long enough?") == "is-30-epochs-long-enough"
