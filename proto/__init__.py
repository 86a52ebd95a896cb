"""Wire contracts: the .proto files in ``defs/`` and their betterproto bindings in ``gen/``.

The bindings are generated (``python scripts/gen_proto.py``) and committed;
``tests/test_proto_generated.py`` fails when they are stale.  Import them as::

    from proto.gen.tvix.castore import v1 as castore_pb
"""
