"""MLaaS4HEP in JupyterLab: the Jupyter server extension behind the JupyterLab extension.

The front end (``labextension/``, built into ``mlaas4hep_lab/labextension``) talks only to the REST routes
below ``<base_url>/mlaas4hep-lab/``; they call the engine (:mod:`.inspect`, :mod:`.runs`, :mod:`.notebooks`)
and, with the user's token from the environment, the jobs and inference services (:mod:`.services`).

``pip install`` of the package enables both halves (``etc/jupyter/jupyter_server_config.d/mlaas4hep_lab.json``
and ``share/jupyter/labextensions/mlaas4hep-lab``). Importing this module is light: jupyter_server and
tornado are imported when the server loads the extension, never by ``import mlaas4hep_lab``.
"""

from __future__ import annotations

from mlaas4hep_lab import __version__

__all__ = ["LABEXTENSION", "API", "__version__"]

LABEXTENSION = "mlaas4hep-lab"   # the npm package name, and its folder in share/jupyter/labextensions
API = "mlaas4hep-lab"            # the routes' prefix below the server's base_url


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    """Where the prebuilt front end is (``jupyter labextension develop`` links it from here)."""
    return [{"src": "../labextension", "dest": LABEXTENSION}]


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "mlaas4hep_lab.lab"}]


def _load_jupyter_server_extension(server_app) -> None:
    """Add the REST routes to a running Jupyter server (called by jupyter_server)."""
    from mlaas4hep_lab.lab.handlers import setup_handlers

    setup_handlers(server_app)
    server_app.log.info("mlaas4hep-lab: server extension loaded (routes below %s%s/)",
                        server_app.web_app.settings.get("base_url", "/"), API)
