"""Schemathesis against the served OpenAPI description: no request makes a 5xx.

Every operation of ``/openapi.json`` of a real ``tympan serve`` (JACK output,
JACK MIDI, matcher worker) gets generated requests, valid and invalid; the only
check is that the server never answers with a server error. The operations
are run one by one inside the test (Schemathesis' pytest fixture loader does
not work with pytest 9.2).
"""

from __future__ import annotations

import pytest

from serving import Served


@pytest.fixture(scope="module")
def served(jack_server, tmp_path_factory):
    s = Served(jack_server, tmp_path_factory.mktemp("fuzz"), "--upload-limit-mb", "1")
    yield s
    s.stop()


def test_no_generated_request_gets_a_server_error(served):
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis import checks

    schema = schemathesis.openapi.from_url(served.url + "/openapi.json")
    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) >= 15, [op.label for op in operations]
    for op in operations:
        @given(case=op.as_strategy())
        @settings(max_examples=30, deadline=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            case.call_and_validate(checks=[checks.not_a_server_error])

        try:
            check()
        except Exception as err:
            raise AssertionError(f"{op.label}: {err}") from None
    assert served.proc.poll() is None, "the server died under the generated requests"
    assert served.status()["audio"], "the audio output stopped"
