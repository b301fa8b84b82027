"""Settings: every one documented, secrets never printed, misspelt overrides refused."""

import re
from pathlib import Path

import pytest

from modelstream.errors import ConfigurationError
from modelstream.services.gateway.settings import GatewaySettings
from modelstream.services.monitor.settings import MonitorSettings
from modelstream.services.predictor.settings import PredictorSettings
from modelstream.services.publisher.settings import PublisherSettings
from modelstream.services.trainer.settings import TrainerSettings
from modelstream.services.validator.settings import ValidatorSettings
from modelstream.settings import Settings, load

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
EVERY_SETTINGS_CLASS = (
    Settings,
    TrainerSettings,
    ValidatorSettings,
    PublisherSettings,
    PredictorSettings,
    MonitorSettings,
    GatewaySettings,
)


@pytest.mark.parametrize("cls", EVERY_SETTINGS_CLASS, ids=lambda c: c.__name__)
def test_the_readme_names_every_setting(cls):
    for field in cls.model_fields:
        variable = f"MODELSTREAM_{field.upper()}"
        # a table row may abbreviate a family: `MODELSTREAM_EXPORT_EVERY_LABELS`, `_EXPORT_MIN_GAIN`
        shorthand = re.search(rf"`_{field.upper()}`", README)
        assert variable in README or shorthand, f"{variable} is not in the README"


@pytest.mark.parametrize("cls", EVERY_SETTINGS_CLASS[1:], ids=lambda c: c.__name__)
def test_each_service_has_its_own_metrics_port(cls):
    settings = load(cls, **{f"{cls.service}_metrics_port": 4321})
    assert settings.metrics_port == 4321


def test_ports_of_services_differ_by_default(monkeypatch):
    for cls in EVERY_SETTINGS_CLASS[1:]:
        monkeypatch.delenv(f"MODELSTREAM_{cls.service.upper()}_METRICS_PORT", raising=False)
    ports = [load(cls).metrics_port for cls in EVERY_SETTINGS_CLASS[1:]]
    assert len(set(ports)) == len(ports) and 0 not in ports


def test_secrets_are_not_printed(monkeypatch):
    monkeypatch.setenv("MODELSTREAM_SASL_PASSWORD", "hunter2")
    monkeypatch.setenv("MODELSTREAM_INFLUXDB_PASSWORD", "swordfish")
    settings = load(MonitorSettings)
    assert "hunter2" not in repr(settings) and "swordfish" not in str(settings)
    assert settings.sasl_password is not None
    assert settings.sasl_password.get_secret_value() == "hunter2"


def test_a_misspelt_override_is_refused_and_a_bad_value_is_one_line():
    with pytest.raises(TypeError, match="metrics_prot"):
        load(PredictorSettings, metrics_prot=0)
    with pytest.raises(ConfigurationError, match="MODELSTREAM_PREDICTOR_SESSION_TIMEOUT_S"):
        load(PredictorSettings, predictor_session_timeout_s=1)
