"""The validation switch: set_validation, the validation context manager, is_validation_enabled."""

from __future__ import annotations

import threading

import pytest

import physscale as ps


def test_validation_is_on_by_default() -> None:
    assert ps.is_validation_enabled() is True


def test_set_validation_switches_globally_and_back() -> None:
    try:
        ps.set_validation(False)
        assert ps.is_validation_enabled() is False
        # Process-wide, as torch.distributions' default: another thread sees it too.
        seen: list[bool] = []
        t = threading.Thread(target=lambda: seen.append(ps.is_validation_enabled()))
        t.start()
        t.join()
        assert seen == [False]
    finally:
        ps.set_validation(True)
    assert ps.is_validation_enabled() is True


def test_context_manager_restores_the_previous_state_even_on_error() -> None:
    seen: list[bool] = []

    def fails() -> None:
        with ps.validation(False):
            seen.append(ps.is_validation_enabled())
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fails()
    assert seen == [False]
    assert ps.is_validation_enabled() is True


def test_context_manager_nests_and_restores_each_level() -> None:
    with ps.validation(False):
        with ps.validation(True):
            assert ps.is_validation_enabled() is True
        assert ps.is_validation_enabled() is False
    assert ps.is_validation_enabled() is True


def test_context_manager_changes_nothing_until_entered() -> None:
    scope = ps.validation(False)
    assert ps.is_validation_enabled() is True
    with scope:
        assert ps.is_validation_enabled() is False
    assert ps.is_validation_enabled() is True


def test_it_also_decorates_a_function() -> None:
    @ps.validation(False)
    def inside() -> bool:
        return ps.is_validation_enabled()

    assert inside() is False
    assert ps.is_validation_enabled() is True


@pytest.mark.parametrize("bad", [0, 1, None, "off"])
def test_non_bool_flags_are_refused(bad: object) -> None:
    with pytest.raises(ps.OptionError, match="True or False"):
        ps.set_validation(bad)  # type: ignore[arg-type]
    with pytest.raises(ps.OptionError, match="True or False"):
        ps.validation(bad)  # type: ignore[arg-type]
    assert ps.is_validation_enabled() is True
