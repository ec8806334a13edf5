"""Operator tools: the ``azsl-flower`` command (keys, TLS, SuperNode auth, connections)."""
