"""A spy for the tests that check which kernel an ``implementation=`` switch runs (the paths agree to
rounding, so only the calls tell them apart)."""


def record_calls(monkeypatch, module, names):
    """Wrap ``module.<name>`` for each of ``names`` so every call appends its name to the returned list."""
    calls = []
    for name in names:
        real = getattr(module, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            calls.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)
    return calls
