"""The index of closed forms (refattn.theory): one import finds every closed form of the families,
the same objects (not copies), and nothing is left out. Deterministic."""

import inspect

from refattn import theory
from refattn.lsh import theory as lsh_theory
from refattn.performer import theory as performer_theory


def test_the_index_re_exports_every_family_closed_form():
    for family in (performer_theory, lsh_theory):
        for name in family.__all__:
            assert getattr(theory, name) is getattr(family, name), name
    assert set(theory.__all__) == set(performer_theory.__all__) | set(lsh_theory.__all__)


def test_every_public_function_of_a_family_is_indexed():
    for family in (performer_theory, lsh_theory):
        public = {n for n, f in inspect.getmembers(family, inspect.isfunction)
                  if f.__module__ == family.__name__ and not n.startswith("_")}
        assert public <= set(theory.__all__), public - set(theory.__all__)
