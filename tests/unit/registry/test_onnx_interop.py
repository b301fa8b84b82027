"""ONNX export runs in onnxruntime with the predictor's scores; skl2onnx models import."""

import numpy as np
import onnxruntime as ort
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from modelstream.learn.linear import LinearModel
from modelstream.learn.procedure import train
from modelstream.learn.sgd import GDConfig
from modelstream.registry.onnx_interop import UnsupportedModelError, export_onnx, import_onnx


def trained(loader, task):  # type: ignore[no-untyped-def]
    data = loader()
    X, y = data.data.astype(float), data.target
    classes = [] if task == "REGRESSION" else [str(c) for c in sorted(set(y.tolist()))]
    model = train(
        X,
        y,
        task,
        [f"f{i}" for i in range(X.shape[1])],
        classes,
        GDConfig(seed=0, max_epochs=30),
        (1e-3,),
        2,
    ).model
    return model, X


def run(onnx_bytes, X):  # type: ignore[no-untyped-def]
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: X.astype(np.float32)})


@pytest.mark.parametrize(
    ("loader", "task"),
    [(load_breast_cancer, "BINARY"), (load_digits, "MULTICLASS"), (load_diabetes, "REGRESSION")],
)
def test_exported_model_scores_like_the_predictor(loader, task):
    model, X = trained(loader, task)
    exported = export_onnx(model, name="m", version=3, digest="ab" * 32)
    (output,) = run(exported, X)
    expected = model.proba(X)
    if task == "REGRESSION":
        assert np.allclose(output[:, 0], expected, rtol=1e-5, atol=1e-3)
    else:
        assert np.allclose(output, expected, atol=1e-5)
        assert (output.argmax(axis=1) == expected.argmax(axis=1)).mean() > 0.999
    back = import_onnx(exported)  # and the export imports again, exactly
    assert back.task == task and back.feature_names == model.feature_names
    assert np.allclose(back.W, model.W, rtol=1e-6, atol=1e-7)
    import onnx

    props = {p.key: p.value for p in onnx.load_model_from_string(exported).metadata_props}
    assert props["modelstream.digest"] == "ab" * 32 and props["modelstream.version"] == "3"


@pytest.mark.parametrize("loader", [load_breast_cancer, load_digits])
def test_skl2onnx_logistic_regression_imports(loader):
    from skl2onnx import to_onnx

    data = loader()
    X, y = data.data.astype(float), data.target
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(X, y)
    onnx_bytes = to_onnx(pipeline, X[:1].astype(np.float32)).SerializeToString()
    imported = import_onnx(onnx_bytes)
    model = LinearModel(
        imported.task,
        [f"f{i}" for i in range(X.shape[1])],
        imported.classes,
        imported.W,
        imported.b,
        imported.mean,
        imported.scale,
    )
    assert imported.classes == [str(c) for c in pipeline.classes_]
    ours = model.proba(X)
    assert np.allclose(ours, pipeline.predict_proba(X), atol=1e-5)
    assert (ours.argmax(axis=1) == pipeline.predict(X)).all()


def test_skl2onnx_linear_regression_imports():
    from skl2onnx import to_onnx

    data = load_diabetes()
    regression = LinearRegression().fit(data.data, data.target)
    imported = import_onnx(
        to_onnx(regression, data.data[:1].astype(np.float32)).SerializeToString()
    )
    model = LinearModel(
        "REGRESSION",
        [f"f{i}" for i in range(10)],
        [],
        imported.W,
        imported.b,
        imported.mean,
        imported.scale,
    )
    assert np.allclose(model.proba(data.data), regression.predict(data.data), atol=1e-3)


def test_unsupported_graphs_are_refused_by_operator_name():
    from skl2onnx import to_onnx
    from sklearn.tree import DecisionTreeClassifier

    data = load_breast_cancer()
    tree = DecisionTreeClassifier(max_depth=2).fit(data.data, data.target)
    with pytest.raises(UnsupportedModelError, match="TreeEnsembleClassifier"):
        import_onnx(to_onnx(tree, data.data[:1].astype(np.float32)).SerializeToString())
    with pytest.raises(UnsupportedModelError, match="not an ONNX model"):
        import_onnx(b"\x00\x01 definitely not protobuf")
