"""Evaluation: the one method registry and what reads it.

- [`methods`][refattn.evaluation.methods]: every method, its budget rule and its seed stream;
- [`report`][refattn.evaluation.report]: ``refattn report``'s table on real attention;
- [`exact_paths`][refattn.evaluation.exact_paths]: the oracle's own paths against each other and mpmath;
- [`datasets`][refattn.evaluation.datasets]: the embedded MiniLM attention and synthetic processes;
- [`claims`][refattn.evaluation.claims]: ``refattn theory``'s Monte Carlo tables.
"""
