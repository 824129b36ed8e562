"""Dask Gateway as a JupyterHub-managed service: the server's configuration and the command the hub runs.

The hub (:func:`mlaas4hep_lab.hub.config.services`) starts ``python -m mlaas4hep_lab.hub.gateway`` with
``JUPYTERHUB_API_TOKEN``, ``JUPYTERHUB_API_URL`` and ``JUPYTERHUB_SERVICE_NAME=dask-gateway`` (JupyterHub sets
them for every managed service) and the ``MLAAS4HEP_GATEWAY_*`` settings
(:class:`~mlaas4hep_lab.hub.settings.GatewaySettings`). The gateway then serves:

* its HTTP proxy on ``MLAAS4HEP_SERVICE_IP:MLAAS4HEP_GATEWAY_PORT`` below ``/services/dask-gateway``: the hub's
  proxy routes that path there, so the REST API and every cluster's dashboard are at
  ``HUB/services/dask-gateway/`` (``api/v1/...``, ``clusters/NAME/status``);
* its scheduler proxy (TLS, one port for all clusters, routed by SNI) on ``MLAAS4HEP_GATEWAY_SCHEDULER_PORT``:
  clients reach their schedulers there directly (an HTTP proxy cannot carry Dask's protocol);
* its private API on 127.0.0.1 and a free port (only its own proxy talks to it).

**Who may use it.** ``JupyterHubAuthenticator`` asks the hub who owns each request's token (the client sends
``Authorization: jupyterhub $JUPYTERHUB_API_TOKEN``) and, the service being named, requires the scope
``access:services!service=dask-gateway``: the hub's ``user`` role grants it and the users' server tokens carry
it; a token made with fewer scopes is refused. Users see and control only their own clusters.

**How clusters run** (``MLAAS4HEP_GATEWAY_BACKEND``):

* ``unsafe``: ``UnsafeLocalBackend``, schedulers and workers are processes of the gateway's user (the hub's).
  ``auto`` picks it with local single-user servers (SimpleLocalProcessSpawner runs every user's server as the
  hub's user already, so a cluster gives a user nothing their own server does not) and when the hub is not
  root (nothing else can work there).
* ``local``: ``LocalBackend``, each cluster runs under the system account named like its hub user; it needs
  the hub to run as root and those accounts to exist (as JupyterHub's LocalProcessSpawner does). ``auto``
  picks it for servers in containers with the hub as root, so that users' code never runs as root.
  On Kubernetes, dask-gateway's own Helm chart (KubeBackend) is the better home for clusters.

**Limits**: every cluster gets the workers' size and the per-cluster limits of the settings (cores, memory,
workers, idle timeout); the gateway caps a ``scale()`` beyond them. A site's own additions go into a
``dask_gateway_config.py`` in the hub's state folder (the service's working folder): it is loaded after these
settings and wins over them.
"""

from __future__ import annotations

import sys
from typing import Any

from mlaas4hep_lab.hub.settings import GatewaySettings

__all__ = ["SERVICE", "PREFIX", "BACKENDS", "gateway_config", "client_environment", "main"]

SERVICE = "dask-gateway"
PREFIX = f"/services/{SERVICE}"
BACKENDS = {"unsafe": "dask_gateway_server.backends.local.UnsafeLocalBackend",
            "local": "dask_gateway_server.backends.local.LocalBackend"}


def gateway_config(g: GatewaySettings, backend: str | None = None) -> Any:
    """The Dask Gateway server's configuration (a ``traitlets.config.Config``) from the settings ``g``;
    ``backend``: ``unsafe`` or ``local`` (default: the settings' choice, ``auto`` read as for local servers)."""
    from traitlets.config import Config

    backend = backend or g.backend_for("local", as_root=False)
    c = Config()
    c.DaskGateway.address = "127.0.0.1:0"   # the private API: a free port, reached only by the proxy below
    c.DaskGateway.authenticator_class = "dask_gateway_server.auth.JupyterHubAuthenticator"
    c.DaskGateway.backend_class = BACKENDS[backend]
    c.DaskGateway.log_level = "INFO"   # cluster starts and stops in the hub's log
    # only tokens holding access:services!service=dask-gateway (set from $JUPYTERHUB_SERVICE_NAME as well)
    c.JupyterHubAuthenticator.jupyterhub_service_name = SERVICE
    c.Proxy.address = f"{g.ip}:{g.port}"
    c.Proxy.tcp_address = f"{g.scheduler_ip or g.ip}:{g.scheduler_port}"
    c.Proxy.prefix = PREFIX   # the hub's proxy forwards /services/dask-gateway/... with its prefix
    c.LocalBackend.clusters_directory = g.clusters_dir
    # the very Python of the users' kernels: the same dask, distributed and mlaas4hep-lab on both sides
    c.ClusterConfig.scheduler_cmd = [g.python, "-m", "distributed.cli.dask_scheduler"]
    c.ClusterConfig.worker_cmd = [g.python, "-m", "distributed.cli.dask_worker"]
    c.ClusterConfig.environment = {"MPLBACKEND": "Agg"}
    c.ClusterConfig.worker_cores = g.worker_cores
    c.ClusterConfig.worker_memory = g.worker_memory
    c.ClusterConfig.scheduler_cores = 1
    c.ClusterConfig.scheduler_memory = g.scheduler_memory
    c.ClusterConfig.cluster_max_workers = g.max_workers
    c.ClusterConfig.cluster_max_cores = g.max_cores
    c.ClusterConfig.cluster_max_memory = g.max_memory
    c.ClusterConfig.idle_timeout = g.idle_timeout
    return c


def client_environment(g: GatewaySettings, address: str, public: str, scheduler_host: str) -> dict[str, str]:
    """What a user's server needs so that ``dask_gateway.Gateway()`` (and ``connect("gateway")``) works with no
    configuration: the API ``address`` (``.../services/dask-gateway``), the ``public`` address the browser
    opens dashboards under, the scheduler proxy, and JupyterHub authentication ($JUPYTERHUB_API_TOKEN)."""
    return {"DASK_GATEWAY__ADDRESS": address.rstrip("/"),
            "DASK_GATEWAY__PUBLIC_ADDRESS": public.rstrip("/"),
            "DASK_GATEWAY__PROXY_ADDRESS": f"gateway://{scheduler_host}:{g.scheduler_port}",
            "DASK_GATEWAY__AUTH__TYPE": "jupyterhub"}


def main(argv: list[str] | None = None) -> None:
    """Run the Dask Gateway server with the settings of the environment (what the hub's service runs).

    Extra arguments go to ``dask-gateway-server`` (``--log-level DEBUG``, ``-f site_config.py``)."""
    from mlaas4hep_lab.extras import require

    app_module = require("dask_gateway_server.app")
    g = GatewaySettings()
    app_module.DaskGateway.launch_instance(argv=list(sys.argv[1:] if argv is None else argv),
                                           config=gateway_config(g))


if __name__ == "__main__":
    main()
