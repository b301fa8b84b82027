"""`modelstream run monitor` / `python -m modelstream.services.monitor`."""

from modelstream.runner import service_main
from modelstream.services.monitor.app import MonitorApp
from modelstream.services.monitor.settings import MonitorSettings


def main() -> None:
    service_main(MonitorSettings, MonitorApp)


if __name__ == "__main__":
    main()
