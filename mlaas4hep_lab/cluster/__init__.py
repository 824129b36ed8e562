"""Where the engine's work runs: this process, or a Dask cluster (``--dask ADDRESS``, ``dask=``).

Nothing here imports Dask until a cluster is asked for: ``import mlaas4hep_lab`` stays light.
"""

from __future__ import annotations

from mlaas4hep_lab.extras import lazy_attributes

__all__ = ["Cluster", "connect", "using_dask", "parse_address", "forward_credentials"]

__getattr__ = lazy_attributes(__name__, {
    "Cluster": "mlaas4hep_lab.cluster.connect",
    "connect": "mlaas4hep_lab.cluster.connect",
    "using_dask": "mlaas4hep_lab.cluster.connect",
    "parse_address": "mlaas4hep_lab.cluster.connect",
    "forward_credentials": "mlaas4hep_lab.cluster.credentials",
})


def __dir__() -> list[str]:
    return sorted(__all__)
