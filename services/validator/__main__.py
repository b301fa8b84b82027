"""`modelstream run validator` / `python -m modelstream.services.validator`."""

from modelstream.runner import service_main
from modelstream.services.validator.app import ValidatorApp
from modelstream.services.validator.settings import ValidatorSettings


def main() -> None:
    service_main(ValidatorSettings, ValidatorApp)


if __name__ == "__main__":
    main()
