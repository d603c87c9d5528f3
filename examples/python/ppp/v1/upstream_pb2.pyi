from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STATUS_UNSPECIFIED: _ClassVar[Status]
    STATUS_OK: _ClassVar[Status]
    STATUS_UNKNOWN_SOCKET: _ClassVar[Status]
    STATUS_FAILED: _ClassVar[Status]

class Scope(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCOPE_ALL: _ClassVar[Scope]
    SCOPE_ACTIVE: _ClassVar[Scope]
    SCOPE_INACTIVE: _ClassVar[Scope]
STATUS_UNSPECIFIED: Status
STATUS_OK: Status
STATUS_UNKNOWN_SOCKET: Status
STATUS_FAILED: Status
SCOPE_ALL: Scope
SCOPE_ACTIVE: Scope
SCOPE_INACTIVE: Scope

class NodeEventBatch(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[NodeEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[NodeEvent, _Mapping]]] = ...) -> None: ...

class UpstreamCommandBatch(_message.Message):
    __slots__ = ("commands",)
    COMMANDS_FIELD_NUMBER: _ClassVar[int]
    commands: _containers.RepeatedCompositeFieldContainer[UpstreamCommand]
    def __init__(self, commands: _Optional[_Iterable[_Union[UpstreamCommand, _Mapping]]] = ...) -> None: ...

class NodeEvent(_message.Message):
    __slots__ = ("hello", "opened", "data", "closed", "result", "event_seq", "redelivered")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    OPENED_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    EVENT_SEQ_FIELD_NUMBER: _ClassVar[int]
    REDELIVERED_FIELD_NUMBER: _ClassVar[int]
    hello: NodeHello
    opened: SocketOpened
    data: SocketData
    closed: SocketClosed
    result: CommandResult
    event_seq: int
    redelivered: bool
    def __init__(self, hello: _Optional[_Union[NodeHello, _Mapping]] = ..., opened: _Optional[_Union[SocketOpened, _Mapping]] = ..., data: _Optional[_Union[SocketData, _Mapping]] = ..., closed: _Optional[_Union[SocketClosed, _Mapping]] = ..., result: _Optional[_Union[CommandResult, _Mapping]] = ..., event_seq: _Optional[int] = ..., redelivered: _Optional[bool] = ...) -> None: ...

class NodeHello(_message.Message):
    __slots__ = ("node_id", "cluster", "version", "run_id", "started_at_unix_ms")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    cluster: str
    version: str
    run_id: str
    started_at_unix_ms: int
    def __init__(self, node_id: _Optional[str] = ..., cluster: _Optional[str] = ..., version: _Optional[str] = ..., run_id: _Optional[str] = ..., started_at_unix_ms: _Optional[int] = ...) -> None: ...

class SocketInfo(_message.Message):
    __slots__ = ("id", "node_id", "remote_addr", "local_addr", "connected_at_unix_ms", "labels", "tls_server_name")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    REMOTE_ADDR_FIELD_NUMBER: _ClassVar[int]
    LOCAL_ADDR_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    TLS_SERVER_NAME_FIELD_NUMBER: _ClassVar[int]
    id: str
    node_id: str
    remote_addr: str
    local_addr: str
    connected_at_unix_ms: int
    labels: _containers.ScalarMap[str, str]
    tls_server_name: str
    def __init__(self, id: _Optional[str] = ..., node_id: _Optional[str] = ..., remote_addr: _Optional[str] = ..., local_addr: _Optional[str] = ..., connected_at_unix_ms: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., tls_server_name: _Optional[str] = ...) -> None: ...

class SocketOpened(_message.Message):
    __slots__ = ("socket", "resumed")
    SOCKET_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FIELD_NUMBER: _ClassVar[int]
    socket: SocketInfo
    resumed: bool
    def __init__(self, socket: _Optional[_Union[SocketInfo, _Mapping]] = ..., resumed: _Optional[bool] = ...) -> None: ...

class SocketData(_message.Message):
    __slots__ = ("socket_id", "seq", "payload", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SOCKET_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    socket_id: str
    seq: int
    payload: bytes
    labels: _containers.ScalarMap[str, str]
    def __init__(self, socket_id: _Optional[str] = ..., seq: _Optional[int] = ..., payload: _Optional[bytes] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class SocketClosed(_message.Message):
    __slots__ = ("socket_id", "reason")
    SOCKET_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    socket_id: str
    reason: str
    def __init__(self, socket_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class CommandResult(_message.Message):
    __slots__ = ("command_id", "status", "detail")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    status: Status
    detail: str
    def __init__(self, command_id: _Optional[str] = ..., status: _Optional[_Union[Status, str]] = ..., detail: _Optional[str] = ...) -> None: ...

class UpstreamCommand(_message.Message):
    __slots__ = ("command_id", "send", "broadcast", "close", "set_labels", "ack")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    SEND_FIELD_NUMBER: _ClassVar[int]
    BROADCAST_FIELD_NUMBER: _ClassVar[int]
    CLOSE_FIELD_NUMBER: _ClassVar[int]
    SET_LABELS_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    send: Send
    broadcast: Broadcast
    close: Close
    set_labels: SetLabels
    ack: Ack
    def __init__(self, command_id: _Optional[str] = ..., send: _Optional[_Union[Send, _Mapping]] = ..., broadcast: _Optional[_Union[Broadcast, _Mapping]] = ..., close: _Optional[_Union[Close, _Mapping]] = ..., set_labels: _Optional[_Union[SetLabels, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("event_seq",)
    EVENT_SEQ_FIELD_NUMBER: _ClassVar[int]
    event_seq: int
    def __init__(self, event_seq: _Optional[int] = ...) -> None: ...

class Send(_message.Message):
    __slots__ = ("socket_id", "payload")
    SOCKET_ID_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    socket_id: str
    payload: bytes
    def __init__(self, socket_id: _Optional[str] = ..., payload: _Optional[bytes] = ...) -> None: ...

class Broadcast(_message.Message):
    __slots__ = ("scope", "payload", "selector")
    class SelectorEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    scope: Scope
    payload: bytes
    selector: _containers.ScalarMap[str, str]
    def __init__(self, scope: _Optional[_Union[Scope, str]] = ..., payload: _Optional[bytes] = ..., selector: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Close(_message.Message):
    __slots__ = ("socket_id", "reason")
    SOCKET_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    socket_id: str
    reason: str
    def __init__(self, socket_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class SetLabels(_message.Message):
    __slots__ = ("socket_id", "labels", "replace")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SOCKET_ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    socket_id: str
    labels: _containers.ScalarMap[str, str]
    replace: bool
    def __init__(self, socket_id: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., replace: _Optional[bool] = ...) -> None: ...
