"""The loopback deployment: a real SuperLink and SuperNodes on 127.0.0.1 (``local`` is the
command; ``layout`` its work folder and the owners' data; ``processes`` starts and stops them)."""
