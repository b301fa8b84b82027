"""`modelstream run publisher` / `python -m modelstream.services.publisher`."""

from modelstream.runner import service_main
from modelstream.services.publisher.app import PublisherApp
from modelstream.services.publisher.settings import PublisherSettings


def main() -> None:
    service_main(PublisherSettings, PublisherApp)


if __name__ == "__main__":
    main()
