"""Protocol connectors: each sub-package implements one interface from ``engine``."""
