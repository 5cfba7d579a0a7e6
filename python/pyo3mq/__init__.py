"""pyo3mq: a fast MQTT 3.1/3.1.1 broker with a Rust core and a Python face."""

from pyo3mq._pyo3mq import BrokerStartError, MqttError, __version__
from pyo3mq.broker import Broker

__all__ = ["Broker", "BrokerStartError", "MqttError", "__version__"]
