"""Every hookspec is the plugin author's documentation: check that it is complete."""

from __future__ import annotations

import inspect

import pytest

from clusterbus import hookspecs

SPECS = [(n, f) for n, f in vars(hookspecs).items()
         if n.startswith("clusterbus_") and callable(f)]


def test_there_are_hooks_and_all_are_named_clusterbus_():
    names = {n for n, _ in SPECS}
    assert {"clusterbus_node_up", "clusterbus_node_down", "clusterbus_vrrp_transition",
            "clusterbus_event", "clusterbus_startup", "clusterbus_resolve_node"} <= names


@pytest.mark.parametrize("name,fn", SPECS, ids=[n for n, _ in SPECS])
def test_docstring_documents_every_parameter_and_the_return(name, fn):
    doc = inspect.getdoc(fn)
    assert doc, f"{name} has no docstring"
    summary = doc.splitlines()[0]
    assert summary.endswith(".") or summary.endswith(":"), f"{name}: summary line"
    for param in inspect.signature(fn).parameters:
        assert f":param {param}:" in doc, f"{name}: parameter {param} undocumented"
    assert ":returns:" in doc, f"{name}: return value undocumented"
    assert "block" in doc, f"{name}: must say whether it may block"


def test_required_signatures():
    sig = {n: list(inspect.signature(f).parameters) for n, f in SPECS}
    assert sig["clusterbus_node_up"] == ["event", "cluster"]
    assert sig["clusterbus_node_down"] == ["event", "cluster"]
    assert sig["clusterbus_vrrp_transition"] == ["event", "cluster"]
    assert sig["clusterbus_event"] == ["event", "cluster"]
    assert sig["clusterbus_resolve_node"] == ["addr", "cluster"]


def test_startup_is_historic_and_resolve_is_firstresult():
    assert hookspecs.clusterbus_startup.clusterbus_spec["historic"] is True
    assert hookspecs.clusterbus_resolve_node.clusterbus_spec["firstresult"] is True
    for topic, hook in hookspecs.TOPIC_HOOKS.items():
        assert hasattr(hookspecs, hook), topic
