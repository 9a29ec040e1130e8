"""Reference implementations (oracles) of algorithms that now run in the native core.

These are the numpy versions the core was ported from, kept only for the differential
tests (``tests/adapters/test_native_*.py``): the core must agree with them within 1e-9
relative over long drifting streams. They are not a product path and are not registered
as adapters.
"""
