"""Evaluation: the one method registry and what reads it.

- :mod:`~refattn.evaluation.methods`: every method, its budget rule and its seed stream;
- :mod:`~refattn.evaluation.report`: ``refattn report``'s table on real attention;
- :mod:`~refattn.evaluation.exact_paths`: the oracle's own paths against each other and mpmath;
- :mod:`~refattn.evaluation.datasets`: the embedded MiniLM attention and synthetic processes;
- :mod:`~refattn.evaluation.claims`: ``refattn theory``'s Monte Carlo tables.
"""
