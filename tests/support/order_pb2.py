"""A protobuf message class, ``Order {string id = 1; int64 amount = 2;}``, built from its
descriptor at import time the way protoc's generated modules do, so the tests need no protoc.
Routes name it ``tests.support.order_pb2:Order``."""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_FIELD = descriptor_pb2.FieldDescriptorProto
_file = descriptor_pb2.FileDescriptorProto(name="tests/support/order.proto",
                                           package="tests.support", syntax="proto3")
_order = _file.message_type.add(name="Order")
_order.field.add(name="id", number=1, type=_FIELD.TYPE_STRING, label=_FIELD.LABEL_OPTIONAL)
_order.field.add(name="amount", number=2, type=_FIELD.TYPE_INT64, label=_FIELD.LABEL_OPTIONAL)
_pool = descriptor_pool.Default()
try:
    _pool.FindFileByName(_file.name)
except KeyError:
    _pool.Add(_file)

Order = message_factory.GetMessageClass(_pool.FindMessageTypeByName("tests.support.Order"))
