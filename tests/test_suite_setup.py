"""The test suite's own machinery: xdist groups keep a fixture on one worker.

Several modules build a module-scoped fixture that trains (a study, a smoke
run) and mark its tests ``xdist_group`` so that ``pytest -n 2`` (setup.cfg:
``--dist loadgroup``) runs them on one worker and builds it once. If an
upgrade of pytest or pytest-xdist breaks that, nothing fails, the suite
just builds each fixture on both workers (pytest 9.2 with xdist 3.8 did:
+50 s of CI); this test makes it fail instead.
"""

import os
import textwrap

import _binary


def test_grouped_tests_share_a_worker_under_the_suites_options(tmp_path):
  (tmp_path / "test_grouped.py").write_text(
    textwrap.dedent(
      """
      import os, time
      import pytest

      @pytest.mark.xdist_group("g")
      @pytest.mark.parametrize("i", range(4))
      def test_grouped(i):
        print("worker", os.environ["PYTEST_XDIST_WORKER"])
        time.sleep(0.2)  # gives the other worker time to ask for work
        assert False  # so that -rA is not needed to see the print

      @pytest.mark.parametrize("i", range(4))
      def test_free(i):
        time.sleep(0.2)
      """
    )
  )
  # The suite's own options (setup.cfg's addopts), on a file outside the
  # suite, so that neither its conftest nor its JAX is loaded.
  proc = _binary.run(
    "pytest",
    *("-n", "2", "-p", "no:cacheprovider"),
    *("-c", os.path.join(_binary.ROOT, "setup.cfg")),
    *("--rootdir", str(tmp_path), str(tmp_path / "test_grouped.py")),
    devices=None,
  )
  workers = {
    line.split()[1]
    for line in proc.stdout.splitlines()
    if line.startswith("worker ")
  }
  assert "4 failed, 4 passed" in proc.stdout, proc.stdout[-2000:]
  assert len(workers) == 1, f"xdist_group tests ran on {sorted(workers)}"
