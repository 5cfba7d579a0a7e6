"""The pytest plugin shipped in the wheel: a user's project, with nothing but pyo3mq
installed, gets `mqtt_broker`, `mqtt_broker_factory` and `mqtt_client`."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

USER_TESTS = textwrap.dedent(
    """
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    import pyo3mq


    def test_broker_fixture(mqtt_broker):
        assert mqtt_broker.host == "127.0.0.1"
        assert mqtt_broker.url == f"mqtt://127.0.0.1:{mqtt_broker.port}"
        assert isinstance(mqtt_broker.broker, pyo3mq.Broker)
        got = []
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="paho-user")
        client.on_message = lambda c, u, m: got.append((m.topic, m.payload))
        client.connect(mqtt_broker.host, mqtt_broker.port)
        client.loop_start()
        client.subscribe("t", qos=1)[0]
        info = client.publish("t", b"hello", qos=1)
        info.wait_for_publish(5)
        for _ in range(500):
            if got:
                break
            import time; time.sleep(0.01)
        client.loop_stop()
        client.disconnect()
        assert got == [("t", b"hello")]


    def test_factory_with_settings(mqtt_broker_factory):
        small = mqtt_broker_factory(max_packet_size=64)
        other = mqtt_broker_factory()
        assert small.port != other.port
        assert small.broker.config.max_packet_size == 64


    async def test_client_fixture(mqtt_client, mqtt_broker):
        await mqtt_client.subscribe("a/+", qos=1)
        await mqtt_client.publish("a/b", b"x", qos=1)
        async for message in mqtt_client.messages:
            assert (message.topic, message.payload) == ("a/b", b"x")
            break
        assert mqtt_broker.broker.stats()["clients_connected"] == 1
    """
)


def test_a_users_project_gets_the_fixtures(tmp_path: Path) -> None:
    (tmp_path / "test_user.py").write_text(USER_TESTS)
    (tmp_path / "pytest.ini").write_text("[pytest]\nasyncio_mode = auto\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_user.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 passed" in proc.stdout, proc.stdout
