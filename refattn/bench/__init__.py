"""The benchmark suite (``refattn bench``): speed, memory and scaling of every method of the one
registry, as ratios measured in one run (:mod:`refattn.bench.suite`)."""

from refattn.bench.suite import *  # noqa: F401,F403
from refattn.bench.suite import __all__  # noqa: F401
