"""Model families: one adapter file each over the shared contract in base.py, listed in registry.py."""
