"""`modelstream run publisher` / `python -m modelstream.services.publisher`."""

from modelstream.runner import configure_logging, run_service
from modelstream.services.publisher.app import PublisherApp
from modelstream.services.publisher.settings import PublisherSettings
from modelstream.settings import load


def main() -> None:
    settings = load(PublisherSettings)
    configure_logging(settings.log_level)
    run_service(lambda: PublisherApp(settings))


if __name__ == "__main__":
    main()
