"""Executors: the Executor protocol (base), and one module per runtime (Lua, WASM, Podman).

msgscript.compose.open_executors opens them all, keyed by the name a script's `executor` header gives.
"""
