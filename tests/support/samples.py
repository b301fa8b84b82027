"""One valid record of every contract, for round-trip tests."""

from __future__ import annotations

from typing import Any

import numpy as np


def tensor(values: Any) -> dict[str, Any]:
    array = np.ascontiguousarray(values, dtype="<f8")
    return {"dtype": "<f8", "shape": list(array.shape), "data": array.tobytes()}


def model_artifact() -> dict[str, Any]:
    return {
        "body": {
            "name": "breast-cancer",
            "version": 3,
            "stage": "PRODUCTION",
            "task": "BINARY",
            "feature_names": ["mean radius", "mean texture"],
            "classes": ["0", "1"],
            "weights": tensor([[0.5], [-1.25]]),
            "intercepts": tensor([0.1]),
            "feature_mean": tensor([14.1, 19.3]),
            "feature_scale": tensor([3.5, 4.3]),
            "training": {
                "algorithm": "minibatch-gd",
                "l2": 0.01,
                "learning_rate": 0.1,
                "lr_decay": 0.01,
                "batch_size": 32,
                "max_epochs": 200,
                "patience": 10,
                "validation_fraction": 0.1,
                "seed": 7,
                "cv_folds": 5,
                "l2_grid": [0.001, 0.01, 0.1],
                "l2_grid_scores": [0.95, 0.97, 0.96],
                "epochs_run": 42,
                "hidden": [],
                "hyperparameters": {},
            },
            "metrics": {"accuracy": 0.97, "log_loss": 0.08},
            "lineage": {
                "origin": "BATCH",
                "ranges": [
                    {"topic": "modelstream.training", "partition": 0, "start": 0, "end": 569}
                ],
                "example_count": 569,
            },
            "parent_version": 2,
            "created_at_ms": 1_790_000_000_000,
            "created_by": "trainer",
            "encryption": None,
            "onnx": None,
            "layers": None,
        },
        "digest": "ab" * 32,
        "signature": b"\x01" * 64,
        "key_id": "0123456789abcdef",
    }


def serving_spec() -> dict[str, Any]:
    """An image classifier's spec with an embedding output: every record and enum in use."""
    return {
        "inputs": [
            {
                "name": "image",
                "kind": "IMAGE",
                "graph_input": "x",
                "datatype": None,
                "shape": [],
                "image": {
                    "color": "BGR",
                    "height": 48,
                    "width": 192,
                    "resize": "HEIGHT",
                    "resize_shorter_to": 0,
                    "interpolation": "OPENCV_LINEAR",
                    "scale": 1 / 255,
                    "mean": [0.5],
                    "std": [0.5],
                    "pad": "END",
                    "pad_value": 0.0,
                    "layout": "NCHW",
                    "formats": ["PNG", "JPEG"],
                    "max_pixels": 40_000_000,
                },
                "text": None,
                "bytes": None,
            },
            {
                "name": "caption",
                "kind": "TEXT",
                "graph_input": "input_ids",
                "datatype": None,
                "shape": [],
                "image": None,
                "text": {
                    "tokenizer": "WORDPIECE",
                    "tokenizer_json": "{}",
                    "max_length": 256,
                    "max_chars": 0,
                    "attention_mask_input": "attention_mask",
                    "token_type_ids_input": "",
                },
                "bytes": None,
            },
            {
                "name": "file",
                "kind": "BYTES",
                "graph_input": "bytes",
                "datatype": None,
                "shape": [],
                "image": None,
                "text": None,
                "bytes": {
                    "beg_size": 1024,
                    "mid_size": 0,
                    "end_size": 1024,
                    "block_size": 4096,
                    "padding_token": 256,
                    "strip_whitespace": True,
                },
            },
            {
                "name": "mask",
                "kind": "TENSOR",
                "graph_input": "mask",
                "datatype": "FP32",
                "shape": [3, -1],
                "image": None,
                "text": None,
                "bytes": None,
            },
        ],
        "scores": {
            "graph_output": "probs",
            "labels": ["0", "180"],
            "activation": "NONE",
            "threshold": 0.9,
            "below_threshold_label": "unknown",
            "top_k": 1,
        },
        "outputs": [
            {
                "name": "embedding",
                "graph_output": "hidden",
                "pool": "MEAN",
                "normalize": "L2",
                "datatype": "FP32",
            }
        ],
        "max_batch_size": 32,
        "max_queue_delay_ms": 5,
    }


SAMPLES: dict[str, dict[str, Any]] = {
    "ModelArtifact": model_artifact(),
    "TrainingExample": {
        "model": "breast-cancer",
        "features": {"mean radius": 17.99, "mean texture": 10.38},
        "label": "1",
        "example_id": "e-1",
        "timestamp_ms": 1_790_000_000_000,
        "categories": {"diagnosis centre": "north"},
        "tensors": [],
    },
    "PredictionRequest": {
        "request_id": "r-1",
        "model": "breast-cancer",
        "features": [17.99, 10.38],
        "version": 3,
        "sent_at_ms": 1_790_000_000_000,
        "categories": {},
        "tensors": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [1],
                "data": b"\x04\x00\x00\x00\x89PNG",
            },
            {
                "name": "mask",
                "datatype": "INT64",
                "shape": [2],
                "data": np.asarray([1, 0], "<i8").tobytes(),
            },
        ],
    },
    "Prediction": {
        "request_id": "r-1",
        "model": "breast-cancer",
        "version": 3,
        "digest_prefix": "abababababab",
        "prediction": "1",
        "scores": {"0": 0.02, "1": 0.98},
        "route": "production",
        "requested_at_ms": 1_790_000_000_000,
        "predicted_at_ms": 1_790_000_000_004,
        "outputs": [
            {
                "name": "embedding",
                "datatype": "FP32",
                "shape": [3],
                "data": np.asarray([0.5, -0.25, 0.0], "<f4").tobytes(),
            }
        ],
    },
    "Feedback": {
        "request_id": "r-1",
        "model": "breast-cancer",
        "label": "1",
        "timestamp_ms": 1_790_000_000_100,
    },
    "Command": {
        "model": "breast-cancer",
        "action": "DEFINE",
        "definition": {
            "task": "BINARY",
            "feature_names": [],
            "classes": ["0", "1"],
            "retrain_every": 500,
            "min_examples": 50,
            "window_size": 20000,
            "cv_folds": 5,
            "thresholds": {"min_accuracy": 0.9},
            "tolerance": 0.01,
            "l2_grid": [],
            "seed": 0,
            "family": "linear",
            "hidden": [],
        },
        "version": None,
        "traffic": None,
        "actor": "cli",
        "reason": "",
        "issued_at_ms": 1_790_000_000_000,
    },
    "ValidationReport": {
        "model": "breast-cancer",
        "candidate_digest": "ab" * 32,
        "passed": True,
        "method": "cross-validation",
        "metrics": {"accuracy_mean": 0.97, "accuracy_std": 0.01},
        "champion_version": 2,
        "champion_metrics": {"accuracy_mean": 0.96},
        "reasons": [],
        "folds": 5,
        "examples": 569,
        "artifact": model_artifact(),
        "validated_at_ms": 1_790_000_000_000,
        "validator": "validator",
    },
    "AuditEvent": {
        "model": "breast-cancer",
        "event": "published",
        "version": 3,
        "digest": "ab" * 32,
        "actor": "publisher",
        "service": "publisher",
        "reason": "passed validation",
        "details": {"parent": "2"},
        "at_ms": 1_790_000_000_000,
    },
    "InFlightMarker": {"first": 120, "last": 183, "mode": "RECORD", "crashes": 2},
    "MonitorJoinState": {
        "first_seen_ms": 1_790_000_000_000,
        "request": b"\xc3\x01request",
        "prediction": None,
        "feedback": b"\xc3\x01feedback",
        "feedback_partition": 4,
        "feedback_offset": 17,
        "done": False,
    },
    "MonitorLabelledBatch": {
        "labels": [
            {
                "request_id": "r-1",
                "request": b"\xc3\x01request",
                "prediction": b"\xc3\x01prediction",
                "feedback": b"\xc3\x01feedback",
                "feedback_partition": 4,
                "feedback_offset": 17,
            }
        ]
    },
    "MonitorOutcomes": {
        "model": "breast-cancer",
        "version": 3,
        "at_ms": 1_790_000_000_000,
        "sums": {
            "task": "BINARY",
            "count": 20,
            "correct": 19.0,
            "log_loss": 1.5,
            "abs_error": 0.0,
            "squared_error": 0.0,
            "delay_ms": 2000.0,
            "bin_count": [0, 0, 0, 0, 0, 0, 0, 0, 2, 18],
            "bin_correct": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 18.0],
            "bin_confidence": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.7, 17.1],
        },
    },
    "ServingSpec": serving_spec(),
    "MonitorModelState": {
        "version": 3,
        "learner": {
            "weights": [[0.5, -0.25]],
            "intercept": 0.1,
            "learned": 40,
            "counts": [140, 140],
            "means": [1.0, 2.0],
            "vars": [0.5, 4.0],
            "layers": [],
        },
        "metrics": {
            "3": {
                "total": 2,
                "columns": [[1.0, 0.0], [0.1, 2.3], [0.9, 0.9], [0.0, 0.0], [120.0, 80.0]],
            }
        },
        "feedback_ranges": {"2": [3, 18]},
        "learned_since_export": 12,
        "last_export_ms": 1_790_000_000_000,
        "paired": [[1.0, 0.0]],
        "rolled_back": [],
        "last_train_ms": 0,
        "joined_total": 2,
        "drift_windows": {
            "window": 500,
            "score_counts": [0, 1, 0, 0, 0, 0, 0, 0, 0, 1],
            "feature_sums": [0.5, -1.25],
            "feature_seen": 2,
        },
    },
}
