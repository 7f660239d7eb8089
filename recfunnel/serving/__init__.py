"""Serving: the funnel's last step, `triton_repo/` answered by a real Triton Inference Server.

`server.TritonServer` starts and stops `tritonserver` (a system install, or the binary inside
the `nvidia-pytriton` wheel); `client.TritonClient` talks to it over HTTP or gRPC.
"""
from recfunnel.serving.client import ModelStatistics, ServingError, TritonClient
from recfunnel.serving.server import TritonServer, TritonServerError

__all__ = ["ModelStatistics", "ServingError", "TritonClient", "TritonServer",
           "TritonServerError"]
