"""Isolation below seccomp: namespaces, a private root, and the ``Isolate`` that sets them up."""
