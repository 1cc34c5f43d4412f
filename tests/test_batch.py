"""Batched engines (`streamer build --batch 4`): four sessions in one call per stage give the outputs of
four solo sessions, and sessions joining or leaving mid-stream change nothing in the others'."""
import numpy as np
import pytest

from helpers import report
from runtime.device.batch import BatchedSession, RowsFull
from runtime.host.session import EngineSession
from unitio.media import split_units, synthetic_input
from unitio.units import InputError

UNITS = 8


def _streams(spec, n_sessions):
    out = []
    for r in range(n_sessions):
        audio, frames = synthetic_input(spec, UNITS, r)
        out.append(list(split_units(audio, frames, spec, UNITS)))
    return out


def _text(spec, r):
    return np.full(spec.text_in_tokens, r + 1)


def test_four_batched_sessions_give_four_solo_sessions(tiny_ort_engines, tiny_batch_engines):
    """On the CPU twin with emulated CUDA graphs. Tolerance: tokens equal; audio within 1e-5 (another
    batch size's GEMMs sum in another order); frames within one level of 255, rounding at a .5 boundary."""
    with BatchedSession(tiny_batch_engines, threads=1, graphs=True) as batch:
        streams = _streams(batch.spec, 4)
        rows = [batch.join(seed=10 + r) for r in range(4)]
        got = {row: [] for row in rows}
        for k in range(UNITS):
            out = batch.step({row: (*streams[i][k], _text(batch.spec, i)) for i, row in enumerate(rows)})
            for row in rows:
                got[row].append(out[row])
        last = {row: batch.flush(row) for row in rows}
    audio_err = frames_err = 0.0
    for i, row in enumerate(rows):
        with EngineSession(tiny_ort_engines, seed=10 + i, threads=1) as solo:
            want = [solo.step(a, f, text_in=_text(solo.spec, i)) for a, f in streams[i]]
            want_last = solo.flush()
        for a, b in zip(want, got[row]):
            np.testing.assert_array_equal(a.text_tokens, b.text_tokens)
            assert (a.audio is None) == (b.audio is None)
            if a.audio is not None:
                audio_err = max(audio_err, float(np.abs(a.audio - b.audio).max()))
                frames_err = max(frames_err, float(np.abs(a.frames.astype(int) - b.frames).max()))
        audio_err = max(audio_err, float(np.abs(want_last.audio - last[row][0]).max()))
    report(f"batch of 4 vs 4 solo sessions (tiny, ORT): tokens equal, audio max abs {audio_err:.1e}, "
           f"frames max {frames_err:.0f} level")
    assert audio_err < 1e-5 and frames_err <= 1


def test_joining_and_leaving_change_nothing_in_the_other_rows(tiny_batch_engines):
    """Row A streams alone; then again while B joins at unit 3 and C joins at 1 and leaves at 5: A's
    outputs are bitwise the same (rows never read each other). Emulated CUDA graphs on the CPU twin: the
    rows' resets run outside the graphs, on the thinker's stream."""
    with BatchedSession(tiny_batch_engines, threads=1, graphs=True) as batch:
        streams = _streams(batch.spec, 3)
        alone = batch.join(seed=1)
        baseline = [batch.step({alone: streams[0][k]})[alone] for k in range(UNITS)]
        batch.leave(alone)
        a = batch.join(seed=1)
        got, b, c = [], None, None
        for k in range(UNITS):
            if k == 1:
                c = batch.join(seed=3)
            if k == 3:
                b = batch.join(seed=2)
            if k == 5:
                assert batch.flush(c) is not None
                batch.leave(c)
            inputs = {a: streams[0][k]}
            if b is not None:
                inputs[b] = streams[1][k]
            if c in batch.live_rows():
                inputs[c] = streams[2][k]
            got.append(batch.step(inputs)[a])
    for x, y in zip(baseline, got):
        np.testing.assert_array_equal(x.text_tokens, y.text_tokens)
        if x.audio is not None:
            np.testing.assert_array_equal(x.audio, y.audio)
            np.testing.assert_array_equal(x.frames, y.frames)
    assert any(np.abs(r.audio).max() > 0 for r in got[1:])  # not trivially equal


def test_rows_full_and_bad_input_are_refused_without_touching_any_row(tiny_batch_engines):
    with BatchedSession(tiny_batch_engines, threads=1) as batch:
        rows = [batch.join() for _ in range(batch.rows)]
        with pytest.raises(RowsFull, match="all 4 rows"):
            batch.join()
        streams = _streams(batch.spec, 1)[0]
        bad = {r: streams[0] for r in rows}
        bad[rows[2]] = (streams[0][0][:10], streams[0][1])
        with pytest.raises(InputError, match=f"row {rows[2]}: audio unit: expected 3840 samples"):
            batch.step(bad)
        assert all(batch.live[r] == 0 for r in rows)  # no row advanced
        with pytest.raises(InputError, match="expected input for the live rows"):
            batch.step({rows[0]: streams[0]})
