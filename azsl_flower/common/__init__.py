"""What both roles share: run configuration, networks, metrics, the class side of a dataset."""
