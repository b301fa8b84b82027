"""`modelstream run predictor` / `python -m modelstream.services.predictor`."""

from modelstream.runner import service_main
from modelstream.services.predictor.app import PredictorApp
from modelstream.services.predictor.settings import PredictorSettings


def main() -> None:
    service_main(PredictorSettings, PredictorApp)


if __name__ == "__main__":
    main()
