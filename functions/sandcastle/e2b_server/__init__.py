"""A local E2B: an E2B-compatible sandbox server, so the e2b SDK runs unchanged on one machine.

``SandboxServer`` serves E2B's lifecycle API and envd's process and filesystem services on one
port; each sandbox is a hardened bubblewrap workspace of the ``local`` backend. Start it with
``sandcastle sandbox-server`` or in-process (the local runtime and the tests do).
"""

from sandcastle.e2b_server.server import SandboxServer

__all__ = ["SandboxServer"]
