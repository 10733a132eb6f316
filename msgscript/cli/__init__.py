"""The `msgscript` and `msgscriptcli` commands."""

from __future__ import annotations

import os

# gRPC's C core, under the etcd client, prints lines of its own on stderr (one per failed TLS handshake, say),
# outside our log format; the commands report such failures themselves, once. It reads this on import, so
# it is set here, before any command module imports the etcd client. GRPC_VERBOSITY=ERROR (or DEBUG) in the
# environment brings those lines back.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")
