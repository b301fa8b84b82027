"""`modelstream run predictor` / `python -m modelstream.services.predictor`."""

from modelstream.runner import configure_logging, run_service
from modelstream.services.predictor.app import PredictorApp
from modelstream.services.predictor.settings import PredictorSettings
from modelstream.settings import load


def main() -> None:
    settings = load(PredictorSettings)
    configure_logging(settings.log_level)
    run_service(lambda: PredictorApp(settings))


if __name__ == "__main__":
    main()
