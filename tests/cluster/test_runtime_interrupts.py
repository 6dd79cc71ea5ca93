"""An interrupt that lands inside Ray's Cython `get`/`wait` surfaces as a SystemError whose cause
is the KeyboardInterrupt (seen in a full-suite run of the two-node SIGINT test): the runtime
re-raises the interrupt itself, so the runner's checkpoint-and-stop path handles it."""

from __future__ import annotations

import pytest

from metaray.cluster.runtime import _interrupts_as_such


def _raise_from_cython(cause: BaseException) -> None:
    try:
        raise cause
    except BaseException as err:
        raise SystemError("<cyfunction CoreWorker.wait> returned a result with an exception set") from err


def test_an_interrupt_wrapped_in_a_system_error_comes_out_as_the_interrupt():
    with pytest.raises(KeyboardInterrupt, match="signal 2"), _interrupts_as_such():
        _raise_from_cython(KeyboardInterrupt("signal 2"))


def test_other_system_errors_pass_through():
    with pytest.raises(SystemError), _interrupts_as_such():
        _raise_from_cython(ValueError("not an interrupt"))
    with pytest.raises(SystemError), _interrupts_as_such():
        raise SystemError("no cause")
