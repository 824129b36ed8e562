"""Headless widget tests: the comm replaced by a recorder, as ipywidgets' own tests do
(ipywidgets/widgets/tests/utils.py). ``from widget_support import dummy_comm`` in a test file makes the
autouse fixture below apply to it."""

from __future__ import annotations

import pytest
from ipywidgets.widgets import widget as widget_module

__all__ = ["DummyComm", "dummy_comm"]


class DummyComm:
    """Records what a widget would send to the front end (ipywidgets/widgets/tests/utils.py)."""

    comm_id = "a-b-c-d"
    kernel = "Truthy"

    def __init__(self, *args, **kwargs):
        self.messages = []

    def open(self, *args, **kwargs):
        pass

    def on_msg(self, *args, **kwargs):
        pass

    def send(self, *args, **kwargs):
        self.messages.append((args, kwargs))

    def close(self, *args, **kwargs):
        pass


@pytest.fixture(autouse=True)
def dummy_comm(monkeypatch):
    """What ipywidgets' tests/utils.py setup_test_comm does, undone by monkeypatch."""
    import comm

    monkeypatch.setattr(comm, "create_comm", lambda **kw: DummyComm())
    monkeypatch.setattr(comm, "get_comm_manager", lambda **kw: {})
    monkeypatch.setattr(widget_module, "Comm", DummyComm, raising=False)
    yield
