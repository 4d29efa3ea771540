"""plugin_host.jack_server against real jackd: the session's server, a private one,
ports coming and going, connections, and the errors a wrong name gives.

Needs JACK (the ``jack_server`` fixture fails, never skips, without it).
"""

from __future__ import annotations

import os

import jack
import pytest

import plugin_host.jack_server as js
from plugin_host.jack_server import (JACK_ENV, JackPortError, JackServer, JackStartError,
                                     jack_running)


@pytest.fixture
def client(jack_server):
    """A JACK-Client with one audio input ``<name>:in``, closed at teardown."""
    c = jack.Client(jack_server.unique_name("tympan-js"), no_start_server=True)
    c.inports.register("in")
    c.activate()
    yield c
    c.deactivate()
    c.close()


@pytest.fixture
def private(jack_server):
    """A second, named server started here: period 128 at 44100 Hz, no real-time."""
    server = JackServer.start(128, 44100, name=f"tympan-js-{os.getpid()}", realtime=False)
    yield server
    server.stop()


def test_the_session_server_has_the_tests_settings(jack_server):
    assert (jack_server.sample_rate, jack_server.period) == (48000, 256)
    assert all(jack_server.env[k] == v for k, v in JACK_ENV.items())
    assert "system:playback_1" in jack_server.ports()
    assert jack_server.ports("playback") == [p for p in jack_server.ports() if "playback" in p]
    assert jack_server.port_info("system:playback_1")["type"] == "32 bit float mono audio"
    a, b = jack_server.unique_name("x"), jack_server.unique_name("x")
    assert a != b and a.startswith(f"x-{os.getpid()}-")


def test_a_port_appears_connects_and_goes_away(jack_server, client):
    port = f"{client.name}:in"
    assert jack_server.wait_for_port(port) == port
    assert "input" in jack_server.port_info(port)["properties"]
    jack_server.connect("system:capture_1", port)
    assert jack_server.connections(port) == ["system:capture_1"]
    assert port in jack_server.connections("system:capture_1")
    jack_server.disconnect("system:capture_1", port)
    assert jack_server.connections(port) == []
    before = jack_server.ports()
    client.inports.register("late")
    assert jack_server.wait_for_new_port(rf"{client.name}:l\w+", before) == f"{client.name}:late"
    client.inports[0].unregister()
    assert jack_server.wait_for_port(port, present=False) == port


def test_unknown_ports_give_a_clear_error(jack_server):
    with pytest.raises(JackPortError, match=r"^no JACK port 'nobody:here'; ports: \[.*system:"):
        jack_server.port_info("nobody:here")
    with pytest.raises(JackPortError, match=r"^jack_connect nobody:here system:playback_1: "):
        jack_server.connect("nobody:here", "system:playback_1")
    with pytest.raises(JackPortError, match=r"^jack_disconnect system:capture_1 nobody:here: "):
        jack_server.disconnect("system:capture_1", "nobody:here")
    with pytest.raises(JackPortError, match=r"^JACK port 'nobody:here' did not appear within "
                                            r"0.1 s; ports: "):
        jack_server.wait_for_port("nobody:here", timeout=0.1)
    with pytest.raises(JackPortError, match=r"^JACK port 'system:playback_1' did not go away"):
        jack_server.wait_for_port("system:playback_1", timeout=0.1, present=False)
    with pytest.raises(JackPortError, match=r"^no new JACK port matching 'system:.\*' within"):
        jack_server.wait_for_new_port("system:.*", jack_server.ports(), timeout=0.1)
    assert jack_server.connections("nobody:here") == []
    assert isinstance(JackPortError("x"), RuntimeError)


def test_a_private_server_is_started_read_back_attached_and_stopped(jack_server, private):
    name = private.name
    assert private.started_here and private.process.poll() is None
    assert (private.sample_rate, private.period) == (44100, 128)
    assert private.env["JACK_DEFAULT_SERVER"] == name
    assert "system:playback_1" in private.ports()
    assert "JACK server starting in non-realtime mode" in private.log()
    assert private.xrun_report(len(private.log_lines())) == {"driver_woke_late": 0,
                                                           "clients_not_finished": {}}
    # The default server is another one: its settings are untouched.
    assert (jack_server.sample_rate, jack_server.period) == (48000, 256)
    # Attaching (or attach_or_start on a running server) uses it as it is, never owns it.
    for other in (JackServer.attach(name), JackServer.attach_or_start(256, 48000, name=name)):
        assert not other.started_here and (other.sample_rate, other.period) == (44100, 128)
        other.stop()
        assert jack_running(name)
    log_path = private.log_path
    with private:  # the context manager stops it
        pass
    assert private.process.poll() is not None
    assert not jack_running(name) and not log_path.exists()
    private.stop()  # idempotent


def test_no_server_and_a_failed_start_are_clear_errors(jack_server, monkeypatch):
    name = f"tympan-js-none-{os.getpid()}"
    with pytest.raises(JackStartError, match=f"^no JACK server '{name}' is running$"):
        JackServer.attach(name)
    # A jackd that exits at once: the error names the command and holds its log.
    monkeypatch.setattr(js, "jackd_command", lambda period, rate, name, realtime:
                        ["jackd", "-n", name, "--no-realtime", "-d", "no-such-driver"])
    with pytest.raises(JackStartError, match=r"(?s)^the JACK server did not come up \(jackd -n "
                       rf"{name} --no-realtime -d no-such-driver, exit code \d+\); its log:\n.*\S"):
        JackServer.start(name=name, realtime=False, timeout=10)
    assert not jack_running(name)
