"""Fault injection (vgg_jax/faults.py) stays out of training unless asked for."""

import pytest

from vgg_jax import faults


class _Outputs:
  fault_points = {"eval": "eval_rows"}

  def __init__(self):
    self.calls = []

  def eval_rows(self, step, split):
    self.calls.append((step, split))


def test_unset_it_hands_back_what_it_was_given(monkeypatch):
  monkeypatch.delenv(faults.ENV, raising=False)
  outputs, chunks, save = _Outputs(), iter([]), lambda *a: None
  assert faults.install(outputs, chunks, save) == (chunks, save)
  assert "eval_rows" not in vars(outputs)  # The class's method, unwrapped.


@pytest.mark.parametrize("point,wrapped", [("step", "chunks"), ("checkpoint", "save"),
                                           ("eval", "eval_rows"), ("sweep_eval", None)])
def test_set_it_wraps_only_the_point_it_names(point, wrapped, monkeypatch):
  monkeypatch.setenv(faults.ENV, f"{point}:5")
  outputs, chunks, save = _Outputs(), iter([]), lambda *a: None
  new_chunks, new_save = faults.install(outputs, chunks, save)
  assert (new_chunks is not chunks) == (wrapped == "chunks")
  assert (new_save is not save) == (wrapped == "save")
  assert ("eval_rows" in vars(outputs)) == (wrapped == "eval_rows")  # sweep_eval: not hosted.


def test_a_wrapped_point_fires_at_its_step_once(monkeypatch):
  killed = []
  monkeypatch.setenv(faults.ENV, "eval:5")
  monkeypatch.setenv(faults.SIGNAL_ENV, "TERM")
  monkeypatch.setattr(faults.os, "kill", lambda pid, sig: killed.append(sig))
  monkeypatch.setattr(faults, "_sent", [])
  outputs = _Outputs()
  faults.install(outputs, iter([]), None)
  for step in (4, 5, 6):
    outputs.eval_rows(step, "test")
  assert outputs.calls == [(4, "test"), (5, "test"), (6, "test")] and len(killed) == 1


def test_a_malformed_setting_is_refused(monkeypatch):
  monkeypatch.setenv(faults.ENV, "stepp:5")
  with pytest.raises(ValueError, match="expected <point>:<step>"):
    faults.install(_Outputs(), iter([]), None)
