"""The preemption guard: the first signal asks for a checkpoint, a second does
not stop the save, a third stops at once.

What a preempted run writes, and that it resumes bit for bit:
tests/e2e/test_resume.py.
"""

import functools
import signal
import threading

from vgg_jax import preemption


def test_a_second_signal_does_not_stop_the_save_and_a_third_stops_at_once():
  # The third signal goes at once to the handler from before the guard (in a
  # run, Python's own: KeyboardInterrupt). A recording handler stands in for
  # it: whether a KeyboardInterrupt raised inside a signal handler reaches
  # pytest.raises depended on the state of the test process (it did not,
  # twice, in full-suite runs, and always did alone).
  send = functools.partial(signal.pthread_kill, threading.get_ident())
  calls = []
  previous = signal.signal(signal.SIGINT, lambda signum, frame: calls.append(signum))
  try:
    with preemption.guard() as g:
      send(signal.SIGTERM)
      send(signal.SIGINT)
      assert g.requested and g.signal_name == "SIGTERM" and g.count == 2 and not calls
      send(signal.SIGINT)
      assert calls == [signal.SIGINT] and g.count == 3
      assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # Uninstalled at the third.
  finally:
    signal.signal(signal.SIGINT, previous)
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
