"""JupyterHub for mlaas4hep-lab: token login, single-user servers with the package, and two hub services.

Run (one machine, no container engine; the package installed with the `hub` extra, configurable-http-proxy
from npm):

    export MLAAS4HEP_OIDC_ISSUER=https://cms-auth.web.cern.ch/ MLAAS4HEP_OIDC_AUDIENCE=mlaas4hep
    jupyterhub -f jupyterhub_config/jupyterhub_config.py

Then open http://127.0.0.1:8000, paste an access token (`oidc-token cms`), and you are in JupyterLab with the
example notebooks; the Voila dashboard is at /user/NAME/voila/render/notebooks/dashboard.ipynb. The inference
service is at /services/tfaas/, the jobs service at /services/jobs/, Dask Gateway at /services/dask-gateway/
(users' kernels get its address and auth in DASK_GATEWAY__*: `connect("gateway")` and the Lab's "Run on: Dask
Gateway" need no configuration; each cluster's dashboard opens through the hub's proxy). Scripts trade their access token for a
hub token: `curl -X POST -H "Authorization: Bearer $JWT" http://127.0.0.1:8000/hub/api/oidc/token`.

Every knob is an environment variable (defaults in brackets; the code is mlaas4hep_lab/hub/settings.py):

  where things live
    MLAAS4HEP_HUB_STATE          folder of the hub's database, cookie secret, PID files, models, jobs [./mlaas4hep-hub]
    MLAAS4HEP_HUB_HOMES          home of each user, with {username} [STATE/home/{username}]
    MLAAS4HEP_HUB_NOTEBOOKS      notebooks copied into each new home as ~/notebooks [the checkout's notebooks/]
    MLAAS4HEP_STORE              model store of the inference service [STATE/models]
    MLAAS4HEP_JOBS_STATE         jobs service's state (SQLite, job folders) [STATE/jobs]
    MLAAS4HEP_JOBS_DATA_ROOTS    folders whose files jobs may read by path, ':'-separated [none: URLs only]
  training jobs (the jobs service runs as the hub's user: run the hub as root, with bubblewrap installed,
  for each job to run under a system account of its owner in a sandbox)
    MLAAS4HEP_JOBS_ISOLATION     auto | users+bwrap | users | bwrap | none [auto: users+bwrap as root, else bwrap]
    MLAAS4HEP_JOBS_ALLOW_UNISOLATED  1: run jobs even where they cannot be isolated (as the hub's user!) [0: refuse]
    MLAAS4HEP_JOBS_ALLOWED_HOSTS internal data servers jobs may read, e.g. xrootd.site:1094,10.1.0.0/16
                                 [none: only hosts whose addresses are all public]
  network
    MLAAS4HEP_HUB_URL            public URL the proxy listens on [http://127.0.0.1:8000]
    MLAAS4HEP_HUB_IP, _PORT      the hub's internal API [127.0.0.1, 8081]
    MLAAS4HEP_HUB_PROXY_API_PORT the proxy's REST API, on 127.0.0.1 [8001]
    MLAAS4HEP_CHP                configurable-http-proxy [PATH, then ~/.cache/mlaas4hep/chp/node_modules/.bin/]
    MLAAS4HEP_SERVICE_IP         interface of the services [127.0.0.1]
    MLAAS4HEP_TFAAS_PORT         inference service ("tfaas") [8083]
    MLAAS4HEP_JOBS_PORT          jobs service ("jobs") [8084]
    MLAAS4HEP_HUB_JOBS           run the jobs service [1]
  Dask Gateway (mlaas4hep_lab/hub/gateway.py: a hub service authenticated by the users' hub tokens)
    MLAAS4HEP_HUB_GATEWAY        run it [1]
    MLAAS4HEP_GATEWAY_PORT       its HTTP proxy, on MLAAS4HEP_SERVICE_IP, behind /services/dask-gateway/ [8085]
    MLAAS4HEP_GATEWAY_SCHEDULER_PORT  its TLS scheduler proxy, which clients reach directly [8086]
    MLAAS4HEP_GATEWAY_SCHEDULER_IP, _HOST  where that port listens, the host clients use for it
                                 [SERVICE_IP; for containers 0.0.0.0 and the host of MLAAS4HEP_HUB_URL]
    MLAAS4HEP_GATEWAY_BACKEND    unsafe: clusters run as the hub's user | local: as the system account named like
                                 the hub user (root, accounts must exist) [auto: unsafe with local servers or
                                 without root, else local]
    MLAAS4HEP_GATEWAY_CLUSTERS   the clusters' working folders [STATE/dask-gateway]
    every cluster a user starts: MLAAS4HEP_GATEWAY_WORKER_CORES [1], _WORKER_MEMORY [2G], _SCHEDULER_MEMORY [1G],
      and its limits _MAX_WORKERS [4], _MAX_CORES [8], _MAX_MEMORY [16G] (the scheduler's share counted),
      _IDLE_TIMEOUT [1800 s without a client or a task; 0: never]
    A dask_gateway_config.py in STATE is loaded after these and wins (dask-gateway-server's own options).
  login
    MLAAS4HEP_HUB_AUTH           token: paste an OIDC access token | oauth: GenericOAuthenticator redirect [token]
    MLAAS4HEP_OIDC_ISSUER        the IAM (`iss` of its tokens), e.g. https://cms-auth.web.cern.ch/ [required]
    MLAAS4HEP_OIDC_AUDIENCE      `aud` the tokens must carry [any: set it in production]
    MLAAS4HEP_OIDC_JWKS_URL      signing keys [from the issuer's discovery document]
    MLAAS4HEP_OIDC_USERNAME_CLAIM, MLAAS4HEP_OIDC_GROUPS_CLAIM   [preferred_username, groups]
    MLAAS4HEP_HUB_ALLOWED_GROUPS, MLAAS4HEP_HUB_ALLOWED_USERS     who may log in, comma-separated [anyone the IAM vouches for]
    MLAAS4HEP_HUB_ADMIN_GROUPS, MLAAS4HEP_HUB_ADMIN_USERS         hub admins [none]
    MLAAS4HEP_HUB_PUSH_GROUPS    groups that may push models (custom:tfaas:push) and submit jobs
                                 (custom:jobs:submit) [every user]
    JUPYTERHUB_CRYPT_KEY         set (openssl rand -hex 32): sessions end when their access token expires
    MLAAS4HEP_HUB_AUTH_REFRESH_AGE  seconds between those checks [300]
    MLAAS4HEP_OAUTH_CLIENT_ID, _CLIENT_SECRET, _CALLBACK_URL, _SCOPES   for MLAAS4HEP_HUB_AUTH=oauth
  single-user servers
    MLAAS4HEP_HUB_SPAWNER        local (SimpleLocalProcessSpawner) | docker | kube [local]
    MLAAS4HEP_HUB_IMAGE          image for docker/kube (jupyterhub_config/Dockerfile) [mlaas4hep-lab-singleuser:0.1.0]
    MLAAS4HEP_HUB_MEM_LIMIT      memory limit of a container, e.g. 4G [none]
    MLAAS4HEP_HUB_START_TIMEOUT  seconds a server may take to start [300]
    MLAAS4HEP_HUB_PYTHON         Python of local servers and services [the hub's]
"""

from mlaas4hep_lab.hub.config import apply

c = get_config()  # noqa: F821 - provided by JupyterHub when it loads this file

settings = apply(c)

# -- Browser login to the same IAM (GenericOAuthenticator, oauthenticator 17) -----------------------------
# Switched on by MLAAS4HEP_HUB_AUTH=oauth; mlaas4hep_lab.hub.config.generic_oauth then sets:
#   c.JupyterHub.authenticator_class = "generic-oauth"
#   c.GenericOAuthenticator.client_id / client_secret      = $MLAAS4HEP_OAUTH_CLIENT_ID / _SECRET
#   c.GenericOAuthenticator.oauth_callback_url             = $MLAAS4HEP_OAUTH_CALLBACK_URL  [HUB_URL/hub/oauth_callback]
#   c.GenericOAuthenticator.authorize_url / token_url / userdata_url = ISSUER/authorize, /token, /userinfo (INDIGO IAM)
#   c.GenericOAuthenticator.scope = ["openid", "profile", "email"]   ($MLAAS4HEP_OAUTH_SCOPES)
#   c.GenericOAuthenticator.username_claim = "preferred_username"
#   c.GenericOAuthenticator.manage_groups = True; auth_state_groups_key = "oauth_user.groups"
#   c.GenericOAuthenticator.allowed_groups / admin_groups  = $MLAAS4HEP_HUB_ALLOWED_GROUPS / _ADMIN_GROUPS
#   c.GenericOAuthenticator.enable_pkce = True
# Another IdP (Keycloak, CERN SSO) has other endpoint paths: override them here, after apply(c), e.g.
#   c.GenericOAuthenticator.authorize_url = "https://auth.cern.ch/auth/realms/cern/protocol/openid-connect/auth"
# Scripts then use hub tokens from /hub/token instead of the OIDC token exchange.

# -- Containers instead of local processes (MLAAS4HEP_HUB_SPAWNER=docker or kube) --------------------------
# The image is built from jupyterhub_config/Dockerfile:
#   docker build -t mlaas4hep-lab-singleuser:0.1.0 -f jupyterhub_config/Dockerfile .
# DockerSpawner needs `pip install dockerspawner` on the hub and a network shared with the hub:
#   c.DockerSpawner.network_name = "mlaas4hep"; c.JupyterHub.hub_connect_ip = "<hub container name>"
# KubeSpawner is what zero-to-jupyterhub's Helm chart sets up; put these settings in its hub.extraConfig.
# The services keep running beside the hub; servers in containers reach them through the proxy's URL.
