"""The ``instantly-audit`` command line: the composition root that finds commands in registries."""
