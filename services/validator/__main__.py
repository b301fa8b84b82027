"""`modelstream run validator` / `python -m modelstream.services.validator`."""

from modelstream.runner import configure_logging, run_service
from modelstream.services.validator.app import ValidatorApp
from modelstream.services.validator.settings import ValidatorSettings
from modelstream.settings import load


def main() -> None:
    settings = load(ValidatorSettings)
    configure_logging(settings.log_level)
    run_service(lambda: ValidatorApp(settings))


if __name__ == "__main__":
    main()
