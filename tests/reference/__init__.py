"""Reference (oracle) implementations of algorithms that now run in the native core.

The pure-Python/numpy versions production ran before issue 11, kept for differential
tests only (``tests/adapters/test_native_*.py``): the core must agree with them within
1e-9 relative over long drifting streams.
"""
