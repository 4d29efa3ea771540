"""``tympan train teacher``: pseudo-labels of the fine-tuning hits from the match search."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.finetune import read_real_sets, read_teacher

ROOT = Path(__file__).resolve().parents[1]
HITS = ROOT / "configs" / "real-hits.toml"
MODEL = ROOT / "matcher" / "models" / "default.tympan"


def two_hits(tmp_path: Path) -> Path:
    kit = read_real_sets(HITS)["GMRockKit"].folder
    path = tmp_path / "hits.toml"
    path.write_text(f"[kit]\nfolder = '{kit}'\npackage = 'hydrogen-data'\n"
                    "finetune = ['Kick-Hardest.wav', 'Snare-Med.wav']\n"
                    "validation = ['Tom1-Soft.wav']\n")
    return path


def test_the_labels_are_the_searchs_matches_of_the_fine_tuning_hits_only(tmp_path, capsys):
    import torch

    from matcher.audio import load_hit
    from matcher.match import Matcher
    from training.cli import main

    out = tmp_path / "teacher.npz"
    assert main(["teacher", "--model", str(MODEL), "--out", str(out), "--hits",
                 str(two_hits(tmp_path)), "--quiet", "--threads", "2"]) == 0
    assert "2 pseudo-labels" in capsys.readouterr().out
    names = ["GMRockKit/Kick-Hardest.wav", "GMRockKit/Snare-Med.wav"]
    with np.load(out) as z:
        assert list(z["names"]) == names        # the validation hit is not matched
        jtfs, mss = z["jtfs"], z["mss"]
    nu = read_teacher(out, names)
    assert nu.shape == (2, 5) and np.abs(nu).max() <= 1
    # Each label's recorded distances are those of its render to the prepared hit,
    # measured again here.
    m = Matcher(MODEL, device="cpu")
    folder = read_real_sets(HITS)["GMRockKit"].folder
    for i, name in enumerate(names):
        hit = load_hit(folder / name.split("/")[1], m.audio_config)
        with torch.no_grad():
            d_jtfs, d_mss = m.distances(m.render_nu(nu[i].astype(np.float64))[0], hit.audio)
        assert d_jtfs == pytest.approx(float(jtfs[i]), rel=1e-3)
        assert d_mss == pytest.approx(float(mss[i]), rel=1e-3)
    # The search beats a random point of the space on each hit (JTFS distance).
    rand = np.random.default_rng(0).uniform(-1, 1, (2, 5))
    for i, name in enumerate(names):
        hit = load_hit(folder / name.split("/")[1], m.audio_config)
        assert m.distances(m.render_nu(rand[i])[0], hit.audio)[0] > float(jtfs[i])


@pytest.mark.parametrize("argv, message", [
    (["--model", "{tmp}/none.tympan", "--out", "{tmp}/t.npz"], "none.tympan"),
    (["--model", str(MODEL), "--out", "{tmp}/t.npz", "--budget-ms", "0"],
     "--budget-ms 0.0: allowed a positive number"),
    (["--model", str(MODEL), "--out", "{tmp}/t.npz", "--threads", "0"],
     "--threads 0: allowed integers >= 1"),
    (["--model", str(MODEL), "--out", "{tmp}/t.npz", "--hits", "{tmp}/none.toml"],
     "does not exist"),
])
def test_bad_teacher_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    from training.cli import main

    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(["teacher", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tympan train teacher: error:") and "\n" not in err
    assert message in err
    assert not (tmp_path / "t.npz").exists()
