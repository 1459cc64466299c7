"""How work is launched: the `render` command line."""
