"""The signal handlers of `app.signals`, in this process: what is recorded, raised, ignored and
put back. (Real runs stopped by signals: tests/test_workdir_safety.py, tests/test_bad_input_runs.py.)"""
import os
import signal

import pytest

from sde_diffusion.app.signals import Interrupted, StoppedBySignal, StopRequest, interrupted_by_signals


def _handlers():
    return {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}


def test_stop_request_records_the_first_signal_and_puts_handlers_back():
    before = _handlers()
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGHUP)
        os.kill(os.getpid(), signal.SIGTERM)
    assert stop.signum == signal.SIGHUP and _handlers() == before


def test_after_a_stop_signals_stay_ignored_until_restored():
    before = _handlers()
    with pytest.raises(StoppedBySignal) as stopped:
        with StopRequest() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            raise StoppedBySignal(stop.signum, 7)
    assert stopped.value.exit_status == 130 and str(stopped.value).startswith("stopped by SIGINT at step 7")
    assert set(_handlers().values()) == {signal.SIG_IGN}
    os.kill(os.getpid(), signal.SIGINT)  # ignored: no KeyboardInterrupt
    stopped.value.restore_handlers()
    assert _handlers() == before


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_outside_training_a_signal_raises_where_the_run_is_then_later_ones_are_ignored(signum):
    before = _handlers()
    with pytest.raises(Interrupted) as interrupted:
        with interrupted_by_signals():
            os.kill(os.getpid(), signum)
            for _ in range(1000):  # the handler runs at the next bytecode
                pass
    assert interrupted.value.signum == signum and isinstance(interrupted.value, KeyboardInterrupt)
    assert set(_handlers().values()) == {signal.SIG_IGN}
    os.kill(os.getpid(), signal.SIGTERM)  # ignored while the process ends
    for signum_, handler in before.items():
        signal.signal(signum_, handler)
    with interrupted_by_signals():
        pass
    assert _handlers() == before
