"""`modelstream run gateway` / `python -m modelstream.services.gateway`."""

from modelstream.runner import service_main
from modelstream.services.gateway.app import GatewayApp
from modelstream.services.gateway.settings import GatewaySettings


def main() -> None:
    service_main(GatewaySettings, GatewayApp)


if __name__ == "__main__":
    main()
