"""The local castore: blob and directory backends, their gRPC servers, and the URL registry.

* ``blobs.memory`` / ``blobs.objectstore`` — ``BlobService`` backends
* ``directories.memory`` / ``directories.sqlite`` — ``DirectoryService`` backends
  (``directories.graph`` holds the put-stream validation they share)
* ``server`` — thin grpclib servicers over any backend
* ``registry`` — ``blob_service_from_url`` / ``directory_service_from_url``

The interfaces and domain types are in ``clients.castore`` (both sides of the
wire need them).
"""

from __future__ import annotations
