"""Helpers the tests share (raw MQTT packets, stderr capture, teardown); not tests."""
