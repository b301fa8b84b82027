"""`modelstream run trainer` / `python -m modelstream.services.trainer`."""

from modelstream.runner import service_main
from modelstream.services.trainer.app import TrainerApp
from modelstream.services.trainer.settings import TrainerSettings


def main() -> None:
    service_main(TrainerSettings, TrainerApp)


if __name__ == "__main__":
    main()
