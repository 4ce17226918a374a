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


def _listing(tmp_path):
  return sorted(p.name for p in tmp_path.iterdir())


def test_atomic_write_replaces_the_file_only_once_complete(tmp_path):
  path = tmp_path / "table.md"
  path.write_text("old\n")
  with pytest.raises(RuntimeError, match="killed"):
    with workdir.atomic_write(str(path)) as f:
      f.write("half of the new ")
      assert path.read_text() == "old\n"  # readers still see the old file
      raise RuntimeError("killed mid-write")
  assert path.read_text() == "old\n"
  assert _listing(tmp_path) == ["table.md"]  # no temp file left behind
  workdir.write_text(str(path), "new\n")
  assert path.read_text() == "new\n" and _listing(tmp_path) == ["table.md"]


def test_write_json_that_fails_mid_dump_leaves_the_old_file(tmp_path):
  path = tmp_path / "results.json"
  workdir.write_json(str(path), {"a": 1})
  before = path.read_text()
  # json.dump has written "a" when it reaches the object it cannot encode.
  with pytest.raises(TypeError, match="not JSON serializable"):
    workdir.write_json(str(path), {"a": 2, "b": object()})
  assert path.read_text() == before and _listing(tmp_path) == ["results.json"]


def test_atomic_write_creates_files_with_the_usual_permissions(tmp_path):
  plain, atomic = tmp_path / "plain", tmp_path / "atomic"
  plain.write_text("x")
  workdir.write_text(str(atomic), "x")
  assert atomic.stat().st_mode == plain.stat().st_mode
