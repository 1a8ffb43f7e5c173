"""The parts of launching a `tritonserver` (mmserve.server.TritonServer puts them together).

- install: where the binary and its Python backend are, and which models a repository holds
- network: the ports, loopback, where a bind is reached from this machine
- keys: admin and API keys, TLS files, and the security arguments Triton takes
- process: the run folder, the child's environment, dying with the launcher, stopping the group
- probes: the HTTP calls that tell a started server is ours and its models ready
"""
from __future__ import annotations


class LaunchError(RuntimeError):
    """The server could not be found, started or made ready; the message says what to do.

    (The client's ``mmserve.client.ServerError`` is a different thing: a served request
    that failed.)"""
