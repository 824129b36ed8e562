"""JupyterHub integration: the hub's configuration, the OIDC token login, a development issuer.

Modules (each imported explicitly; importing this package loads nothing heavy):

* :mod:`~mlaas4hep_lab.hub.settings`: :class:`HubSettings`, every knob of the hub with its environment
  variable and default;
* :mod:`~mlaas4hep_lab.hub.config`: ``apply(c, settings)`` fills a JupyterHub config object (spawner, proxy,
  the ``tfaas``, ``jobs`` and ``dask-gateway`` services, custom scopes and roles, the authenticator);
* :mod:`~mlaas4hep_lab.hub.gateway`: Dask Gateway's server configuration, run by the hub as a service
  (``python -m mlaas4hep_lab.hub.gateway``);
* :mod:`~mlaas4hep_lab.hub.authenticator`: :class:`OIDCTokenAuthenticator`, login with an OIDC access token
  (JWT) on the login page, and a token exchange ``POST /hub/api/oidc/token`` for scripts;
* :mod:`~mlaas4hep_lab.hub.dev_issuer`: a local OIDC issuer (key pair, JWKS, discovery document) that mints
  tokens, for tests and for trying the hub without an experiment's IAM.

``jupyterhub_config/jupyterhub_config.py`` is the deployable entry point; it only reads the settings and calls
``apply``.
"""
