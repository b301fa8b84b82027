"""`modelstream run trainer` / `python -m modelstream.services.trainer`."""

from modelstream.runner import configure_logging, run_service
from modelstream.services.trainer.app import TrainerApp
from modelstream.services.trainer.settings import TrainerSettings
from modelstream.settings import load


def main() -> None:
    settings = load(TrainerSettings)
    configure_logging(settings.log_level)
    run_service(lambda: TrainerApp(settings))


if __name__ == "__main__":
    main()
