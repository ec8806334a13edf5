"""Methods the tests register through run-config ``method=module:Class`` (plug-ins)."""
