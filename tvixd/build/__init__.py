"""The builder: derivation translation, the OCI (runc) and dummy builders, gRPC servers, URLs.

* :mod:`tvixd.build.translate` — Nix derivation → ``BuildRequest``;
* :mod:`tvixd.build.oci` — builds in runc containers (``oci://``);
* :mod:`tvixd.build.dummy` — a builder that runs nothing (``dummy://``);
* :mod:`tvixd.build.server` — DoBuild and the streaming Build over any builder;
* :mod:`tvixd.build.registry` — builders by URL.

The interface and domain types are in :mod:`clients.build`.
"""
