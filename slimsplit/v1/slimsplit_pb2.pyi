from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FeatureFrame(_message.Message):
    __slots__ = ("protocol_version", "frame_id", "model", "model_version", "mode", "features", "client_send_unix_ns", "top_k", "deadline_ms")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    CLIENT_SEND_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    frame_id: int
    model: str
    model_version: str
    mode: str
    features: bytes
    client_send_unix_ns: int
    top_k: int
    deadline_ms: int
    def __init__(self, protocol_version: _Optional[int] = ..., frame_id: _Optional[int] = ..., model: _Optional[str] = ..., model_version: _Optional[str] = ..., mode: _Optional[str] = ..., features: _Optional[bytes] = ..., client_send_unix_ns: _Optional[int] = ..., top_k: _Optional[int] = ..., deadline_ms: _Optional[int] = ...) -> None: ...

class ServerTiming(_message.Message):
    __slots__ = ("queue_ms", "decode_ms", "tail_ms", "total_ms", "device_cycles", "device_ms", "backend", "batch_size")
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    DECODE_MS_FIELD_NUMBER: _ClassVar[int]
    TAIL_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_CYCLES_FIELD_NUMBER: _ClassVar[int]
    DEVICE_MS_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    queue_ms: float
    decode_ms: float
    tail_ms: float
    total_ms: float
    device_cycles: int
    device_ms: float
    backend: str
    batch_size: int
    def __init__(self, queue_ms: _Optional[float] = ..., decode_ms: _Optional[float] = ..., tail_ms: _Optional[float] = ..., total_ms: _Optional[float] = ..., device_cycles: _Optional[int] = ..., device_ms: _Optional[float] = ..., backend: _Optional[str] = ..., batch_size: _Optional[int] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("frame_id", "classes", "scores", "labels", "timing", "model", "model_version", "mode", "planes_used")
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    PLANES_USED_FIELD_NUMBER: _ClassVar[int]
    frame_id: int
    classes: _containers.RepeatedScalarFieldContainer[int]
    scores: _containers.RepeatedScalarFieldContainer[float]
    labels: _containers.RepeatedScalarFieldContainer[str]
    timing: ServerTiming
    model: str
    model_version: str
    mode: str
    planes_used: int
    def __init__(self, frame_id: _Optional[int] = ..., classes: _Optional[_Iterable[int]] = ..., scores: _Optional[_Iterable[float]] = ..., labels: _Optional[_Iterable[str]] = ..., timing: _Optional[_Union[ServerTiming, _Mapping]] = ..., model: _Optional[str] = ..., model_version: _Optional[str] = ..., mode: _Optional[str] = ..., planes_used: _Optional[int] = ...) -> None: ...

class FrameError(_message.Message):
    __slots__ = ("frame_id", "code", "status", "message", "error_class", "retry_after_ms")
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ERROR_CLASS_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    frame_id: int
    code: int
    status: str
    message: str
    error_class: str
    retry_after_ms: int
    def __init__(self, frame_id: _Optional[int] = ..., code: _Optional[int] = ..., status: _Optional[str] = ..., message: _Optional[str] = ..., error_class: _Optional[str] = ..., retry_after_ms: _Optional[int] = ...) -> None: ...

class StreamReply(_message.Message):
    __slots__ = ("prediction", "error")
    PREDICTION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    prediction: Prediction
    error: FrameError
    def __init__(self, prediction: _Optional[_Union[Prediction, _Mapping]] = ..., error: _Optional[_Union[FrameError, _Mapping]] = ...) -> None: ...

class DescribeRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class ModeInfo(_message.Message):
    __slots__ = ("name", "width", "bits", "accuracy", "payload_bytes_mean", "encoder_ms_p50", "tail_ms_p50")
    NAME_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    BITS_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_MEAN_FIELD_NUMBER: _ClassVar[int]
    ENCODER_MS_P50_FIELD_NUMBER: _ClassVar[int]
    TAIL_MS_P50_FIELD_NUMBER: _ClassVar[int]
    name: str
    width: int
    bits: int
    accuracy: float
    payload_bytes_mean: float
    encoder_ms_p50: float
    tail_ms_p50: float
    def __init__(self, name: _Optional[str] = ..., width: _Optional[int] = ..., bits: _Optional[int] = ..., accuracy: _Optional[float] = ..., payload_bytes_mean: _Optional[float] = ..., encoder_ms_p50: _Optional[float] = ..., tail_ms_p50: _Optional[float] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "classes", "modes", "feature_shape", "manifest_json")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    MODES_FIELD_NUMBER: _ClassVar[int]
    FEATURE_SHAPE_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_JSON_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    classes: _containers.RepeatedScalarFieldContainer[str]
    modes: _containers.RepeatedCompositeFieldContainer[ModeInfo]
    feature_shape: _containers.RepeatedScalarFieldContainer[int]
    manifest_json: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., classes: _Optional[_Iterable[str]] = ..., modes: _Optional[_Iterable[_Union[ModeInfo, _Mapping]]] = ..., feature_shape: _Optional[_Iterable[int]] = ..., manifest_json: _Optional[str] = ...) -> None: ...

class DescribeResponse(_message.Message):
    __slots__ = ("protocol_version", "server_version", "backend", "models")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    server_version: str
    backend: str
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, protocol_version: _Optional[int] = ..., server_version: _Optional[str] = ..., backend: _Optional[str] = ..., models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class PlaneOpen(_message.Message):
    __slots__ = ("protocol_version", "frame_id", "model", "model_version", "mode", "planes", "budget_ms", "top_k", "client_send_unix_ns")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    PLANES_FIELD_NUMBER: _ClassVar[int]
    BUDGET_MS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    CLIENT_SEND_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    frame_id: int
    model: str
    model_version: str
    mode: str
    planes: int
    budget_ms: int
    top_k: int
    client_send_unix_ns: int
    def __init__(self, protocol_version: _Optional[int] = ..., frame_id: _Optional[int] = ..., model: _Optional[str] = ..., model_version: _Optional[str] = ..., mode: _Optional[str] = ..., planes: _Optional[int] = ..., budget_ms: _Optional[int] = ..., top_k: _Optional[int] = ..., client_send_unix_ns: _Optional[int] = ...) -> None: ...

class PlaneData(_message.Message):
    __slots__ = ("frame_id", "unit")
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    frame_id: int
    unit: bytes
    def __init__(self, frame_id: _Optional[int] = ..., unit: _Optional[bytes] = ...) -> None: ...

class PlaneMessage(_message.Message):
    __slots__ = ("open", "plane")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    PLANE_FIELD_NUMBER: _ClassVar[int]
    open: PlaneOpen
    plane: PlaneData
    def __init__(self, open: _Optional[_Union[PlaneOpen, _Mapping]] = ..., plane: _Optional[_Union[PlaneData, _Mapping]] = ...) -> None: ...

class PlaneAck(_message.Message):
    __slots__ = ("frame_id", "plane", "bytes", "late")
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    PLANE_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    LATE_FIELD_NUMBER: _ClassVar[int]
    frame_id: int
    plane: int
    bytes: int
    late: bool
    def __init__(self, frame_id: _Optional[int] = ..., plane: _Optional[int] = ..., bytes: _Optional[int] = ..., late: _Optional[bool] = ...) -> None: ...

class PlaneReply(_message.Message):
    __slots__ = ("ack", "prediction", "error")
    ACK_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ack: PlaneAck
    prediction: Prediction
    error: FrameError
    def __init__(self, ack: _Optional[_Union[PlaneAck, _Mapping]] = ..., prediction: _Optional[_Union[Prediction, _Mapping]] = ..., error: _Optional[_Union[FrameError, _Mapping]] = ...) -> None: ...
