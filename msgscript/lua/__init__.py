"""The Lua side of the daemon: the sandboxed runtime, the module API (api.py), the built-in modules and plugins."""
