import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.rpc import status_pb2 as _status_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Sampler(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SAMPLER_UNSPECIFIED: _ClassVar[Sampler]
    SAMPLER_DDPM: _ClassVar[Sampler]
    SAMPLER_DDIM: _ClassVar[Sampler]
    SAMPLER_EULER_MARUYAMA: _ClassVar[Sampler]
    SAMPLER_DPMPP_2M: _ClassVar[Sampler]
    SAMPLER_DPMPP_2M_SDE: _ClassVar[Sampler]

class Spacing(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SPACING_UNSPECIFIED: _ClassVar[Spacing]
    SPACING_TIME_UNIFORM: _ClassVar[Spacing]
    SPACING_LOGSNR_UNIFORM: _ClassVar[Spacing]
    SPACING_KARRAS: _ClassVar[Spacing]

class OutputFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTPUT_FORMAT_UNSPECIFIED: _ClassVar[OutputFormat]
    OUTPUT_FORMAT_PNG: _ClassVar[OutputFormat]
    OUTPUT_FORMAT_NPY: _ClassVar[OutputFormat]

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]
SAMPLER_UNSPECIFIED: Sampler
SAMPLER_DDPM: Sampler
SAMPLER_DDIM: Sampler
SAMPLER_EULER_MARUYAMA: Sampler
SAMPLER_DPMPP_2M: Sampler
SAMPLER_DPMPP_2M_SDE: Sampler
SPACING_UNSPECIFIED: Spacing
SPACING_TIME_UNIFORM: Spacing
SPACING_LOGSNR_UNIFORM: Spacing
SPACING_KARRAS: Spacing
OUTPUT_FORMAT_UNSPECIFIED: OutputFormat
OUTPUT_FORMAT_PNG: OutputFormat
OUTPUT_FORMAT_NPY: OutputFormat
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState

class EditRequest(_message.Message):
    __slots__ = ("model", "image", "mask", "t0", "steps", "repeats", "sampler", "eta", "seed", "num_samples", "output_format", "preview_every", "request_id", "spacing", "full_schedule", "job")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    T0_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    REPEATS_FIELD_NUMBER: _ClassVar[int]
    SAMPLER_FIELD_NUMBER: _ClassVar[int]
    ETA_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_EVERY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SPACING_FIELD_NUMBER: _ClassVar[int]
    FULL_SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    model: str
    image: bytes
    mask: bytes
    t0: float
    steps: int
    repeats: int
    sampler: Sampler
    eta: float
    seed: int
    num_samples: int
    output_format: OutputFormat
    preview_every: int
    request_id: str
    spacing: Spacing
    full_schedule: bool
    job: JobOptions
    def __init__(self, model: _Optional[str] = ..., image: _Optional[bytes] = ..., mask: _Optional[bytes] = ..., t0: _Optional[float] = ..., steps: _Optional[int] = ..., repeats: _Optional[int] = ..., sampler: _Optional[_Union[Sampler, str]] = ..., eta: _Optional[float] = ..., seed: _Optional[int] = ..., num_samples: _Optional[int] = ..., output_format: _Optional[_Union[OutputFormat, str]] = ..., preview_every: _Optional[int] = ..., request_id: _Optional[str] = ..., spacing: _Optional[_Union[Spacing, str]] = ..., full_schedule: _Optional[bool] = ..., job: _Optional[_Union[JobOptions, _Mapping]] = ...) -> None: ...

class JobOptions(_message.Message):
    __slots__ = ("priority", "webhook_url")
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_URL_FIELD_NUMBER: _ClassVar[int]
    priority: int
    webhook_url: str
    def __init__(self, priority: _Optional[int] = ..., webhook_url: _Optional[str] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("data", "media_type", "seed")
    DATA_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    media_type: str
    seed: int
    def __init__(self, data: _Optional[bytes] = ..., media_type: _Optional[str] = ..., seed: _Optional[int] = ...) -> None: ...

class StageTimings(_message.Message):
    __slots__ = ("queue_seconds", "decode_seconds", "sde_seconds", "network_seconds", "encode_seconds", "total_seconds")
    QUEUE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DECODE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SDE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    NETWORK_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ENCODE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    queue_seconds: float
    decode_seconds: float
    sde_seconds: float
    network_seconds: float
    encode_seconds: float
    total_seconds: float
    def __init__(self, queue_seconds: _Optional[float] = ..., decode_seconds: _Optional[float] = ..., sde_seconds: _Optional[float] = ..., network_seconds: _Optional[float] = ..., encode_seconds: _Optional[float] = ..., total_seconds: _Optional[float] = ...) -> None: ...

class EditResponse(_message.Message):
    __slots__ = ("images", "network_calls", "timings", "model", "model_hash", "cached", "request_id", "steps", "repeats", "sampler", "spacing")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    NETWORK_CALLS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_HASH_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    REPEATS_FIELD_NUMBER: _ClassVar[int]
    SAMPLER_FIELD_NUMBER: _ClassVar[int]
    SPACING_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[Image]
    network_calls: int
    timings: StageTimings
    model: str
    model_hash: str
    cached: bool
    request_id: str
    steps: int
    repeats: int
    sampler: Sampler
    spacing: Spacing
    def __init__(self, images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., network_calls: _Optional[int] = ..., timings: _Optional[_Union[StageTimings, _Mapping]] = ..., model: _Optional[str] = ..., model_hash: _Optional[str] = ..., cached: _Optional[bool] = ..., request_id: _Optional[str] = ..., steps: _Optional[int] = ..., repeats: _Optional[int] = ..., sampler: _Optional[_Union[Sampler, str]] = ..., spacing: _Optional[_Union[Spacing, str]] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("repeat", "repeats", "step", "steps", "network_calls", "total_network_calls", "elapsed_seconds")
    REPEAT_FIELD_NUMBER: _ClassVar[int]
    REPEATS_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    NETWORK_CALLS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_NETWORK_CALLS_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    repeat: int
    repeats: int
    step: int
    steps: int
    network_calls: int
    total_network_calls: int
    elapsed_seconds: float
    def __init__(self, repeat: _Optional[int] = ..., repeats: _Optional[int] = ..., step: _Optional[int] = ..., steps: _Optional[int] = ..., network_calls: _Optional[int] = ..., total_network_calls: _Optional[int] = ..., elapsed_seconds: _Optional[float] = ...) -> None: ...

class Preview(_message.Message):
    __slots__ = ("progress", "images")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    progress: Progress
    images: _containers.RepeatedCompositeFieldContainer[Image]
    def __init__(self, progress: _Optional[_Union[Progress, _Mapping]] = ..., images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ...) -> None: ...

class EditEvent(_message.Message):
    __slots__ = ("progress", "preview", "result", "sequence")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    progress: Progress
    preview: Preview
    result: EditResponse
    sequence: int
    def __init__(self, progress: _Optional[_Union[Progress, _Mapping]] = ..., preview: _Optional[_Union[Preview, _Mapping]] = ..., result: _Optional[_Union[EditResponse, _Mapping]] = ..., sequence: _Optional[int] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "content_hash", "width", "height", "channels", "sde_type", "timesteps", "default_steps", "is_default", "flexible_size", "size_multiple", "description", "max_width", "max_height", "default_sampler", "default_spacing", "reference_sampler")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONTENT_HASH_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    SDE_TYPE_FIELD_NUMBER: _ClassVar[int]
    TIMESTEPS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_STEPS_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    FLEXIBLE_SIZE_FIELD_NUMBER: _ClassVar[int]
    SIZE_MULTIPLE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    MAX_WIDTH_FIELD_NUMBER: _ClassVar[int]
    MAX_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_SAMPLER_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_SPACING_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_SAMPLER_FIELD_NUMBER: _ClassVar[int]
    name: str
    content_hash: str
    width: int
    height: int
    channels: int
    sde_type: str
    timesteps: int
    default_steps: int
    is_default: bool
    flexible_size: bool
    size_multiple: int
    description: str
    max_width: int
    max_height: int
    default_sampler: Sampler
    default_spacing: Spacing
    reference_sampler: Sampler
    def __init__(self, name: _Optional[str] = ..., content_hash: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., channels: _Optional[int] = ..., sde_type: _Optional[str] = ..., timesteps: _Optional[int] = ..., default_steps: _Optional[int] = ..., is_default: _Optional[bool] = ..., flexible_size: _Optional[bool] = ..., size_multiple: _Optional[int] = ..., description: _Optional[str] = ..., max_width: _Optional[int] = ..., max_height: _Optional[int] = ..., default_sampler: _Optional[_Union[Sampler, str]] = ..., default_spacing: _Optional[_Union[Spacing, str]] = ..., reference_sampler: _Optional[_Union[Sampler, str]] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "jobs")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    JOBS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    jobs: str
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., jobs: _Optional[str] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("id", "state", "progress", "result", "error", "priority", "attempts", "create_time", "start_time", "end_time", "expire_time", "webhook")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_FIELD_NUMBER: _ClassVar[int]
    id: str
    state: JobState
    progress: Progress
    result: EditResponse
    error: _status_pb2.Status
    priority: int
    attempts: int
    create_time: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    expire_time: _timestamp_pb2.Timestamp
    webhook: WebhookDelivery
    def __init__(self, id: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., result: _Optional[_Union[EditResponse, _Mapping]] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ..., priority: _Optional[int] = ..., attempts: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., webhook: _Optional[_Union[WebhookDelivery, _Mapping]] = ...) -> None: ...

class WebhookDelivery(_message.Message):
    __slots__ = ("url", "state", "attempts", "last_http_status", "last_error")
    URL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    LAST_HTTP_STATUS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    url: str
    state: str
    attempts: int
    last_http_status: int
    last_error: str
    def __init__(self, url: _Optional[str] = ..., state: _Optional[str] = ..., attempts: _Optional[int] = ..., last_http_status: _Optional[int] = ..., last_error: _Optional[str] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("id", "after_sequence")
    ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    id: str
    after_sequence: int
    def __init__(self, id: _Optional[str] = ..., after_sequence: _Optional[int] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
