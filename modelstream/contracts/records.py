"""Python types of the Avro contracts in ``schemas/``: one TypedDict per record, one StrEnum
per enum, with the same names as the schemas.

These are what the codec returns and takes (``codec.decode(data, Prediction)``), so every
record passed around the code base is checked by mypy against the contract. A unit test
(``tests/unit/contracts/test_records.py``) derives the expected Python type of every field
from the ``.avsc`` files and compares it with these definitions, so the two cannot drift.
"""

from __future__ import annotations

from enum import StrEnum
from typing import NotRequired, TypedDict


class Task(StrEnum):
    """Which link function scores the model: sigmoid, softmax or identity; an embedding
    model's answer is its output tensors (no class, no value)."""

    BINARY = "BINARY"
    MULTICLASS = "MULTICLASS"
    REGRESSION = "REGRESSION"
    EMBEDDING = "EMBEDDING"


class Stage(StrEnum):
    CANDIDATE = "CANDIDATE"
    PRODUCTION = "PRODUCTION"


class Origin(StrEnum):
    BATCH = "BATCH"
    ONLINE = "ONLINE"
    IMPORTED = "IMPORTED"


class Action(StrEnum):
    DEFINE = "DEFINE"
    TRAIN = "TRAIN"
    ROLLBACK = "ROLLBACK"
    SET_TRAFFIC = "SET_TRAFFIC"


class TensorDatatype(StrEnum):
    """Element types of named tensors, as the Open Inference Protocol names them."""

    BOOL = "BOOL"
    UINT8 = "UINT8"
    UINT16 = "UINT16"
    UINT32 = "UINT32"
    UINT64 = "UINT64"
    INT8 = "INT8"
    INT16 = "INT16"
    INT32 = "INT32"
    INT64 = "INT64"
    FP16 = "FP16"
    FP32 = "FP32"
    FP64 = "FP64"
    BYTES = "BYTES"


class NamedTensor(TypedDict):
    """A tensor of a request, example or prediction (see contracts/tensors.py)."""

    name: str
    datatype: TensorDatatype
    shape: list[int]
    data: bytes


# A request's or example's features: packed little-endian float64 in the model's feature
# order, a map by feature name, or a list in feature order.
Features = bytes | dict[str, float] | list[float]
Label = str | float


# -- ServingSpec: how a model that takes tensors is served -------------------------------------
class ColorMode(StrEnum):
    RGB = "RGB"
    BGR = "BGR"
    L = "L"


class ResizeMode(StrEnum):
    NONE = "NONE"
    STRETCH = "STRETCH"
    FIT = "FIT"
    HEIGHT = "HEIGHT"
    SHORTER_SIDE = "SHORTER_SIDE"


class Interpolation(StrEnum):
    NEAREST = "NEAREST"
    BILINEAR = "BILINEAR"
    BICUBIC = "BICUBIC"
    LANCZOS = "LANCZOS"
    OPENCV_LINEAR = "OPENCV_LINEAR"


class PadMode(StrEnum):
    END = "END"
    CENTER = "CENTER"


class Layout(StrEnum):
    NCHW = "NCHW"
    NHWC = "NHWC"
    FLAT = "FLAT"


class Tokenizer(StrEnum):
    GRAPH = "GRAPH"
    WORDPIECE = "WORDPIECE"


class InputKind(StrEnum):
    TENSOR = "TENSOR"
    IMAGE = "IMAGE"
    TEXT = "TEXT"
    BYTES = "BYTES"


class Activation(StrEnum):
    NONE = "NONE"
    SOFTMAX = "SOFTMAX"
    SIGMOID = "SIGMOID"


class Pooling(StrEnum):
    NONE = "NONE"
    MEAN = "MEAN"
    CLS = "CLS"
    MAX = "MAX"


class Normalization(StrEnum):
    NONE = "NONE"
    L2 = "L2"


class ImageSpec(TypedDict):
    color: ColorMode
    height: int
    width: int
    resize: ResizeMode
    resize_shorter_to: int
    interpolation: Interpolation
    scale: float
    mean: list[float]
    std: list[float]
    pad: PadMode
    pad_value: float
    layout: Layout
    formats: list[str]
    max_pixels: int


class TextSpec(TypedDict):
    tokenizer: Tokenizer
    tokenizer_json: str
    max_length: int
    max_chars: int
    attention_mask_input: str
    token_type_ids_input: str


class BytesSpec(TypedDict):
    beg_size: int
    mid_size: int
    end_size: int
    block_size: int
    padding_token: int
    strip_whitespace: bool


class InputSpec(TypedDict):
    name: str
    kind: InputKind
    graph_input: str
    datatype: TensorDatatype | None
    shape: list[int]
    image: ImageSpec | None
    text: TextSpec | None
    bytes: BytesSpec | None


class ScoresSpec(TypedDict):
    graph_output: str
    labels: list[str]
    activation: Activation
    threshold: float
    below_threshold_label: str
    top_k: int


class OutputSpec(TypedDict):
    name: str
    graph_output: str
    pool: Pooling
    normalize: Normalization
    datatype: TensorDatatype


class ServingSpec(TypedDict):
    inputs: list[InputSpec]
    scores: ScoresSpec | None
    outputs: list[OutputSpec]
    max_batch_size: int
    max_queue_delay_ms: int


# -- ModelArtifact ---------------------------------------------------------------------------
class Tensor(TypedDict):
    dtype: str
    shape: list[int]
    data: bytes


class TrainingConfig(TypedDict):
    algorithm: str
    l2: float
    learning_rate: float
    lr_decay: float
    batch_size: int
    max_epochs: int
    patience: int
    validation_fraction: float
    seed: int
    cv_folds: int
    l2_grid: list[float]
    l2_grid_scores: list[float]
    epochs_run: int
    hidden: list[int]
    hyperparameters: dict[str, float]


class OffsetRange(TypedDict):
    topic: str
    partition: int
    start: int
    end: int


class Lineage(TypedDict):
    origin: Origin
    ranges: list[OffsetRange]
    example_count: int


class Encryption(TypedDict):
    algorithm: str
    key_id: str
    nonce: bytes


class OnnxInput(TypedDict):
    name: str
    element_type: str
    features: list[str]


class OnnxGraph(TypedDict):
    graph: bytes
    graph_sha256: str
    inputs: list[OnnxInput]
    scores_output: str
    zipmap_input: str | None
    spec: NotRequired[bytes | None]  # a ServingSpec, single-object encoded (tensor models)


class DenseLayer(TypedDict):
    weights: Tensor
    biases: Tensor


class ModelBody(TypedDict):
    name: str
    version: int
    stage: Stage
    task: Task
    feature_names: list[str]
    classes: list[str]
    weights: Tensor
    intercepts: Tensor
    feature_mean: Tensor
    feature_scale: Tensor
    training: TrainingConfig
    metrics: dict[str, float]
    lineage: Lineage
    parent_version: int | None
    created_at_ms: int
    created_by: str
    encryption: Encryption | None
    onnx: OnnxGraph | None  # an imported ONNX model; None for the native families
    layers: list[DenseLayer] | None  # a multilayer perceptron; None for the others


class ModelArtifact(TypedDict):
    body: ModelBody
    digest: str
    signature: bytes
    key_id: str


# -- inputs ------------------------------------------------------------------------------------
class TrainingExample(TypedDict):
    model: str
    features: Features
    label: Label
    example_id: str | None
    timestamp_ms: int | None
    categories: NotRequired[dict[str, str]]
    tensors: NotRequired[list[NamedTensor]]


class PredictionRequest(TypedDict):
    request_id: str
    model: str
    features: Features
    version: int | None
    sent_at_ms: int | None
    categories: NotRequired[dict[str, str]]
    tensors: NotRequired[list[NamedTensor]]


class Feedback(TypedDict):
    request_id: str
    model: str
    label: Label
    timestamp_ms: int | None


class ModelDefinition(TypedDict):
    task: Task
    feature_names: list[str]
    classes: list[str]
    retrain_every: int
    min_examples: int
    window_size: int
    cv_folds: int
    thresholds: dict[str, float]
    tolerance: float
    l2_grid: list[float]
    seed: int
    family: NotRequired[str]
    hidden: NotRequired[list[int]]


class TrafficSplit(TypedDict):
    challenger_version: int | None
    fraction: float
    shadow: bool


class Command(TypedDict):
    model: str
    action: Action
    definition: ModelDefinition | None
    version: int | None
    traffic: TrafficSplit | None
    actor: str
    reason: str
    issued_at_ms: int


# -- outputs -----------------------------------------------------------------------------------
class Prediction(TypedDict):
    request_id: str
    model: str
    version: int
    digest_prefix: str
    prediction: Label
    scores: dict[str, float]
    route: str
    requested_at_ms: int
    predicted_at_ms: int
    outputs: NotRequired[list[NamedTensor]]


class ValidationReport(TypedDict):
    model: str
    candidate_digest: str
    passed: bool
    method: str
    metrics: dict[str, float]
    champion_version: int | None
    champion_metrics: dict[str, float]
    reasons: list[str]
    folds: int
    examples: int
    artifact: ModelArtifact | None
    validated_at_ms: int
    validator: str


class AuditEvent(TypedDict):
    model: str
    event: str
    version: int | None
    digest: str | None
    actor: str
    service: str
    reason: str
    details: dict[str, str]
    at_ms: int


# -- services' internal state -------------------------------------------------------------------
class InFlightMode(StrEnum):
    SHARED = "SHARED"
    BATCH = "BATCH"
    RECORD = "RECORD"


class InFlightMarker(TypedDict):
    first: int
    last: int
    mode: InFlightMode
    crashes: int


# -- the monitor's internal state ----------------------------------------------------------------
class ScoredRow(TypedDict):
    model: str
    version: int
    predicted_at_ms: int
    features_id: bytes
    features: bytes
    categories: list[str]
    classes: list[str]
    scores: bytes
    prediction: Label


class MonitorScored(TypedDict):
    model: str
    version: int
    predicted_at_ms: int
    request_ids: list[str]
    feature_count: int
    features_id: bytes
    features: bytes
    categories: list[str]
    classes: list[str]
    scores: bytes
    predictions: list[Label]


class MonitorJoinState(TypedDict):
    first_seen_ms: int
    request: bytes | None  # version 1 only
    prediction: bytes | None  # version 1 only
    feedback: bytes | None
    feedback_partition: int | None
    feedback_offset: int | None
    done: bool
    scored: ScoredRow | None


class MonitorLabelledBatch(TypedDict):
    model: str
    request_ids: list[str]
    versions: list[int]
    predicted_at_ms: list[int]
    feature_count: int
    features_id: bytes
    features: bytes
    categories: list[str]
    classes: list[str]
    scores: bytes
    predictions: list[Label]
    labels: list[Label]
    labelled_at_ms: list[int]
    feedback_partitions: list[int]
    feedback_offsets: list[int]
    feedback: list[bytes]


class QualitySums(TypedDict):
    task: str
    count: int
    correct: float
    log_loss: float
    abs_error: float
    squared_error: float
    delay_ms: float
    bin_count: list[int]
    bin_correct: list[float]
    bin_confidence: list[float]


class MonitorOutcomes(TypedDict):
    model: str
    version: int
    at_ms: int
    sums: QualitySums


class OnlineLearnerState(TypedDict):
    weights: list[list[float]]
    intercept: float
    learned: int
    counts: list[int]
    means: list[float]
    vars: list[float]
    layers: NotRequired[list[list[float]]]


class MetricWindowState(TypedDict):
    total: int
    columns: list[list[float]]


class DriftWindowState(TypedDict):
    window: int
    score_counts: list[int]
    feature_sums: list[float]
    feature_seen: int


class MonitorModelState(TypedDict):
    version: int | None
    learner: OnlineLearnerState | None
    metrics: dict[str, MetricWindowState]
    feedback_ranges: dict[str, list[int]]
    learned_since_export: int
    last_export_ms: int
    paired: list[list[float]]
    rolled_back: list[int]
    last_train_ms: int
    joined_total: int
    drift_windows: NotRequired[DriftWindowState | None]


# The top-level record of each file in schemas/, by schema name.
RECORD_TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        ModelArtifact,
        TrainingExample,
        PredictionRequest,
        Prediction,
        Feedback,
        Command,
        ValidationReport,
        AuditEvent,
        InFlightMarker,
        MonitorScored,
        MonitorJoinState,
        MonitorLabelledBatch,
        MonitorModelState,
        MonitorOutcomes,
        ServingSpec,
    )
}
