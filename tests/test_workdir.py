"""The workdir helpers that name what differs and how long is left."""

import pytest

from awt import workdir


def test_first_difference_names_the_dotted_path_in_heres_order():
  there = {"method": "awt", "opt": {"lr": 1e-3, "steps": 10}, "old": 1}
  here = {"method": "awt", "opt": {"steps": 20, "lr": 5e-4}}
  # here's key order decides which difference comes first.
  assert workdir.first_difference(there, here) == ("opt.steps", 10, 20)
  assert workdir.first_difference(there, {**there}) is None
  # A key on one side only compares as None.
  assert workdir.first_difference({"a": 1, "gone": 2}, {"a": 1}, "cfg") == (
    "cfg.gone",
    2,
    None,
  )
  assert workdir.first_difference([1, 2], [1, 3]) == ("", [1, 2], [1, 3])


@pytest.mark.parametrize(
  "seconds, text",
  [(0, "0:00:00"), (59.6, "0:01:00"), (3723, "1:02:03"), (-5, "0:00:00")],
)
def test_fmt_duration(seconds, text):
  assert workdir.fmt_duration(seconds) == text
