"""The repository's Markdown docs, which the doc tests read.

README.md, the benchmarks' READMEs and everything under docs/, as paths
relative to the repository root ``ROOT``.
"""

import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = [
  "README.md",
  "benchmarks/README.md",
  "benchmarks/README_ntk.md",
  *sorted(
    os.path.relpath(p, ROOT)
    for p in glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True)
  ),
]
