"""Reference oracles: the plain-Python/numpy implementations the native core is checked against."""
