"""Launchers: one simulated run (``simulate``), Hydra presets and sweeps (``launch``), the
in-process Flower grid they run on (``inprocess``) and stopping what ``flwr run .`` leaves
behind (``local_superlink``)."""
