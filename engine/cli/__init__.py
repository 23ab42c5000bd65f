"""The ``radbridge`` command line."""
