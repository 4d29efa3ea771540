"""``plugin_host.session.Session`` as the one owner of the match state.

Matches go begin -> apply -> finish (or begin -> fail); a newer upload to a
pad replaces the older one's entry, and loading a kit clears them all and
makes matches still in flight stale (refused with 409, the new kit's pad
untouched). The last test hammers the methods from threads, as concurrent
uploads, kit loads and undos do in the server.
"""

from __future__ import annotations

import random
import threading

import pytest

from plugin_host.kit import load_default_kit
from plugin_host.session import Session, SessionError

THETA = {"f0": 150.0, "tau": 0.3, "p": 1e-3, "D": 1e-3, "alpha": 0.7}
SCORED = {"jtfs_distance": 1.5, "mss_distance": 0.5, "sr": 22050, "seconds": 1.0,
          "target": [], "match": []}


@pytest.fixture
def session(tmp_path):
    s = Session(load_default_kit(), tmp_path / "kits", effects=False)
    s.save_kit("saved")
    yield s
    s.close()


def test_a_match_goes_pending_applied_scored(session):
    gen = session.begin_match(38, 1, "snare.wav")
    assert session.match_state(38)["status"] == "pending" and not session.has_match(38)
    pad = session.apply_match(38, 1, gen, "snare.wav", THETA)
    assert pad["name"] == "snare" and pad["has_match"] and pad["params"]["f0"] == 150.0
    session.finish_match(38, 1, scored=SCORED)
    state = session.match_state(38)
    assert state["status"] == "scored" and state["theta"] == THETA
    assert state["jtfs_distance"] == 1.5 and state["preview"]["sr"] == 22050


REFINED = {"f0": 196.0, "tau": 0.25, "p": 1e-4, "D": 0.2, "alpha": 0.55}


def test_the_refined_stage_replaces_the_fast_one_without_an_undo_step(session):
    before = session.pad_out(session.pad(38))["params"]
    gen = session.begin_match(38, 1, "snare.wav")
    session.apply_match(38, 1, gen, "snare.wav", THETA)
    pad = session.refine_match(38, 1, gen, REFINED, "pitch")
    assert pad["params"] == pytest.approx(REFINED)
    state = session.match_state(38)
    assert state["stage"] == "refined" and state["fast_theta"] == THETA
    assert state["theta"] == REFINED and state["estimate"] == "pitch"
    assert session.undo(38)["params"] == pytest.approx(before)   # one step: the upload


def test_a_hand_edit_or_a_newer_upload_wins_over_a_late_refinement(session):
    gen = session.begin_match(40, 1, "a.wav")
    session.apply_match(40, 1, gen, "a.wav", THETA)
    session.update_pad(40, params={"f0": 300.0})                  # the user turned a knob
    assert session.refine_match(40, 1, gen, REFINED, "index") is None
    assert session.pad_out(session.pad(40))["params"]["f0"] == 300.0
    gen = session.begin_match(41, 2, "b.wav")
    session.apply_match(41, 2, gen, "b.wav", THETA)
    session.begin_match(41, 3, "c.wav")                            # a newer upload
    assert session.refine_match(41, 2, gen, REFINED, "index") is None
    session.load_kit("saved")                                      # and a kit load: 409
    with pytest.raises(SessionError) as err:
        session.refine_match(41, 3, gen, REFINED, "index")
    assert err.value.status == 409


def test_a_failed_match_puts_the_previous_one_back(session):
    gen = session.begin_match(38, 1, "a.wav")
    session.apply_match(38, 1, gen, "a.wav", THETA)
    session.finish_match(38, 1, scored=SCORED)
    session.begin_match(38, 2, "b.wav")
    session.fail_match(38, 2)
    state = session.match_state(38)
    assert state["job"] == 1 and state["status"] == "scored" and session.has_match(38)
    # With nothing before it, the pad has no match again.
    session.begin_match(36, 3, "c.wav")
    session.fail_match(36, 3)
    assert session.match_state(36) == {"status": "none"}


def test_an_older_upload_answered_after_a_newer_one_began_keeps_its_theta(session):
    # A then B on one pad; A's parameters arrive (the worker is first in, first out),
    # B fails: the pad's entry is A's again, with its theta, and A's score lands there.
    gen = session.begin_match(38, 1, "a.wav")
    session.begin_match(38, 2, "b.wav")
    session.apply_match(38, 1, gen, "a.wav", THETA)
    assert session.match_state(38)["job"] == 2           # B is the pad's entry
    session.fail_match(38, 2)
    assert session.match_state(38)["job"] == 1 and session.has_match(38)
    session.finish_match(38, 1, scored=SCORED)
    assert session.match_state(38)["status"] == "scored"


def test_a_match_in_flight_when_a_kit_is_loaded_is_stale(session):
    gen = session.begin_match(38, 1, "a.wav")
    before = session.pad_out(session.pad(38))
    session.load_kit("saved")
    assert session.match_state(38) == {"status": "none"}
    with pytest.raises(SessionError, match="a kit was loaded while it was being matched") as err:
        session.apply_match(38, 1, gen, "a.wav", THETA)
    assert err.value.status == 409
    assert session.pad_out(session.pad(38))["params"] == before["params"]
    session.finish_match(38, 1, scored=SCORED)            # its score is dropped too
    assert session.match_state(38) == {"status": "none"}


def test_concurrent_matches_kit_loads_and_undos_lose_nothing(session):
    notes = (36, 38, 45)
    errors: list[BaseException] = []
    applied: dict[int, list[int]] = {n: [] for n in notes}   # jobs applied per note, in order
    ids = iter(range(1, 10**6))
    id_lock = threading.Lock()

    def upload(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(60):
                note = rng.choice(notes)
                with id_lock:
                    job = next(ids)
                gen = session.begin_match(note, job, f"hit{job}.wav")
                if rng.random() < 0.2:
                    session.fail_match(note, job)
                    continue
                try:
                    session.apply_match(note, job, gen, f"hit{job}.wav",
                                        {**THETA, "f0": 100.0 + job % 500})
                    applied[note].append(job)
                except SessionError as err:
                    assert err.status == 409, err      # stale: a kit load came between
                session.finish_match(note, job, scored=SCORED)
        except BaseException as err:                   # noqa: BLE001 - reported below
            errors.append(err)

    def edit() -> None:
        rng = random.Random(99)
        try:
            for _ in range(40):
                if rng.random() < 0.3:
                    session.load_kit("saved")
                else:
                    try:
                        session.undo(rng.choice(notes))
                    except SessionError as err:
                        assert err.status == 409       # nothing to undo
        except BaseException as err:                   # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(4)]
    threads.append(threading.Thread(target=edit))
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:3]
    # Every upload finished or failed: no entry is left pending, and each entry
    # left is whole (scored with its parameters).
    for note in notes:
        state = session.match_state(note)
        assert state["status"] in ("none", "scored"), state
        if state["status"] == "scored":
            assert state["theta"] is not None and state["job"] in applied[note]
