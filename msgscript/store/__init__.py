"""Script stores: the Store protocol (base), and the memory, file and etcd backends.

msgscript.compose.open_store opens the one the settings name.
"""
