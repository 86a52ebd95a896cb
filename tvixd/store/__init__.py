"""The local store's path-info half (tvix.store.v1): backends, wrappers, the gRPC server, the registry.

* ``pathinfo.memory`` / ``pathinfo.sqlite`` — ``PathInfoService`` backends
* ``pathinfo.cache`` — ``Cache(near, far)``, a read-through cache
* ``pathinfo.signing`` — ``Signing(inner, key)``, signs every path info put
* ``server`` — a thin grpclib servicer over any backend (and a ``NarCalculator``)
* ``registry`` — ``path_info_service_from_url``

The interfaces and the domain type are in ``clients.store`` (both sides of the
wire need them).
"""

from __future__ import annotations
