"""resvae/run/signals.py outside training: StopNow (the job's handler before and after fit) and
how an attempt's end is recorded when its signal surfaced as another error."""

from __future__ import annotations

import os
import signal

import pytest

from resvae.run.folder import end_status
from resvae.run.signals import StopNow, signal_exit


def test_stop_now_runs_the_previous_handler_then_exits_with_128_plus_the_signal() -> None:
    seen = []
    stopper = StopNow(lambda signum, frame: seen.append(signum))
    previous = signal.signal(signal.SIGUSR1, stopper)
    try:
        with pytest.raises(SystemExit) as stopped:
            os.kill(os.getpid(), signal.SIGUSR1)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert stopped.value.code == 128 + signal.SIGUSR1 and seen == [signal.SIGUSR1]
    assert stopper.received == signal.SIGUSR1


def test_a_signal_exit_that_surfaced_as_another_error_is_recorded_as_interrupted() -> None:
    """The exit raised inside a library's update (OmegaConf restoring its flags) can come out as
    that library's own error (seen: AttributeError ... _invalidate_flags_cache); the attempt was
    still stopped by the signal, so it is interrupted (resumable), with 128 + the signal."""
    fired, idle = StopNow(None), StopNow(None)
    fired.received = signal.SIGTERM
    surfaced = AttributeError("'NoneType' object has no attribute '_invalidate_flags_cache'")
    ended = signal_exit(surfaced, [idle, fired])
    assert isinstance(ended, SystemExit) and ended.code == 143 and end_status(ended) == "interrupted"
    # without a signal the error is the attempt's own: it failed
    assert signal_exit(surfaced, [idle]) is surfaced and end_status(surfaced) == "failed"
    # the signal's own exit stays as it is (its code may be another signal's)
    own = SystemExit(128 + signal.SIGUSR2)
    assert signal_exit(own, [fired]) is own
