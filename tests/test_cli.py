"""The ser-edge CLI: table, JSON Lines, timeline, directories, errors and exit codes."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from ser_edge.cli import main

from conftest import LABELS, band_model, tone


def run(*args, input=None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input)


def test_table(tiny_model, wav):
    path = wav(300, 2.0)
    result = run("classify", path, "--model", tiny_model)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["file", "emotion", "conf"]
    assert lines[1].split()[:2] == [str(path), "neutral"]


def test_table_columns_fit_the_files_found_in_a_directory(tiny_model, wav):
    long = wav(300, 2.0, name="clips/a-much-longer-file-name-inside-the-folder.wav")
    wav(300, 2.0, name="clips/b.wav")
    result = run("classify", long.parent, "--model", tiny_model)
    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.splitlines()
    assert len(rows) == 2
    column = header.index("emotion")  # every row's label starts under the header's
    assert [row[column:].split()[0] for row in rows] == ["neutral", "neutral"], result.stdout
    assert all(row[:column].rstrip() == row[:column].strip() for row in rows)


def test_json_lines_schema(tiny_model, wav):
    a, b = wav(300, 2.0, name="a.wav"), wav(10_000, 4.0, name="b.wav")
    result = run("classify", a, b, "--model", tiny_model, "--json")
    assert result.exit_code == 0
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["path"] for r in rows] == [str(a), str(b)]
    assert set(rows[0]) == {"path", "label", "confidence", "probabilities"}
    assert rows[1]["label"] == "disgust"
    assert abs(sum(rows[1]["probabilities"].values()) - 1) < 1e-5


def test_timeline(tiny_model, wav):
    result = run("classify", wav(300, 5.0), "--model", tiny_model, "--json", "--timeline")
    row = json.loads(result.stdout)
    assert [(w["start_s"], w["end_s"]) for w in row["windows"]] == [(0.0, 3.0), (1.0, 4.0), (2.0, 5.0)]


def test_directory_recursion_and_bad_files_continue(tiny_model, wav, tmp_path):
    wav(300, 2.0, name="clips/a.wav")
    wav(10_000, 2.0, name="clips/deeper/b.flac")
    (tmp_path / "clips" / "broken.wav").write_bytes(b"RIFF....garbage")
    (tmp_path / "clips" / "readme.txt").write_text("ignored")
    result = run("classify", tmp_path / "clips", "--model", tiny_model, "--json")
    assert result.exit_code == 1
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 3
    broken = [r for r in rows if "error" in r]
    assert len(broken) == 1 and broken[0]["path"].endswith("broken.wav") and set(broken[0]) == {"path", "error", "error_code"}
    assert sorted(r["label"] for r in rows if "label" in r) == ["disgust", "neutral"]
    assert "broken.wav" in result.stderr and "Traceback" not in result.stderr


def test_json_error_codes_name_the_problem(tiny_model, tmp_path):
    """Programs branch on error_code, which keeps its value when a message is reworded."""
    (tmp_path / "text.wav").write_text("not audio")
    sf.write(tmp_path / "silent.wav", np.zeros(16_000, np.float32), 16_000)
    sf.write(tmp_path / "blip.wav", tone(300, 0.05, 16_000), 16_000)
    sf.write(tmp_path / "ok.wav", tone(300, 1.0, 16_000), 16_000)
    names = ["gone.wav", "text.wav", "silent.wav", "blip.wav", "ok.wav"]
    result = run("classify", *[tmp_path / n for n in names], "--model", tiny_model, "--json")
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r.get("error_code") for r in rows] == ["not_found", "not_audio", "silent", "too_short", None]
    assert result.exit_code == 1


def test_ctrl_c_in_a_batch_keeps_the_rows_printed(tiny_model, wav, monkeypatch):
    from ser_edge.edge_runtime.session import EmotionClassifier

    first, second = wav(300, 1.0, name="a.wav"), wav(300, 1.0, name="b.wav")
    predict_file = EmotionClassifier.predict_file

    def interrupted_on_b(self, source):
        if str(source).endswith("b.wav"):
            raise KeyboardInterrupt
        return predict_file(self, source)

    monkeypatch.setattr(EmotionClassifier, "predict_file", interrupted_on_b)
    result = run("classify", first, second, "--model", tiny_model, "--json")
    assert result.exit_code == 130 and "Traceback" not in result.output
    assert [json.loads(line)["path"] for line in result.stdout.splitlines()] == [str(first)]
    assert result.stderr.strip() == "error: interrupted after 1 of 2 inputs"


def test_each_runtime_error_class_has_its_own_code():
    from ser_edge.edge_runtime import errors

    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.SerEdgeError)]
    codes = [c.code for c in classes]
    assert len(classes) == 12 and len(set(codes)) == len(codes)
    assert all(code.isidentifier() and code.islower() for code in codes)


def test_directories_take_ogg_opus_and_mp3_too(tiny_model, tmp_path):
    """libsndfile decodes Ogg (Vorbis, Opus) and MP3; a directory is searched for them too."""
    folder = tmp_path / "phone"
    folder.mkdir()
    x = tone(300, 1.5, 48_000)
    sf.write(folder / "a.ogg", x, 48_000, format="OGG", subtype="VORBIS")
    sf.write(folder / "b.opus", x, 48_000, format="OGG", subtype="OPUS")
    sf.write(folder / "c.mp3", x, 48_000, format="MP3")
    (folder / "d.txt").write_text("not searched")
    result = run("classify", folder, "--model", tiny_model, "--json")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [Path(r["path"]).name for r in rows] == ["a.ogg", "b.opus", "c.mp3"]
    assert {r["label"] for r in rows} == {"neutral"}  # 300 Hz survives each codec


def test_directories_skip_hidden_entries_and_name_broken_files(tiny_model, tmp_path):
    """Below a directory: .git and macOS's ._ resource forks are not inputs, links to files
    are and links to folders are not followed; a broken link and a 0-byte file are each one
    error, and the good clips are still classified."""
    folder = tmp_path / "clips"
    (folder / ".git").mkdir(parents=True)
    x = tone(300, 1.5, 48_000)
    sf.write(folder / "a.wav", x, 48_000)
    sf.write(folder / ".git" / "b.wav", x, 48_000)
    (folder / "._a.wav").write_bytes(b"\x00\x05\x16\x07 AppleDouble resource fork")
    (folder / "empty.wav").write_bytes(b"")
    (folder / "gone.wav").symlink_to("moved.wav")
    (folder / "sub").mkdir()
    sf.write(folder / "sub" / "c.wav", x, 48_000)
    (folder / "mirror").symlink_to("sub")  # a link to a folder is not followed: c.wav once
    (folder / "alias.wav").symlink_to("a.wav")  # a link to a file is an input
    result = run("classify", folder, "--model", tiny_model, "--json")
    assert result.exit_code == 1, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(str(Path(r["path"]).relative_to(folder)), r.get("label"), r.get("error_code")) for r in rows] == [
        ("a.wav", "neutral", None), ("alias.wav", "neutral", None), ("empty.wav", None, "empty"),
        ("gone.wav", None, "not_found"), ("sub/c.wav", "neutral", None)]
    assert result.stderr.strip().splitlines() == [
        f"error: {folder / 'empty.wav'}: file is empty (0 bytes)",
        f"error: {folder / 'gone.wav'}: broken link (to moved.wav)",
    ]
    hidden = run("classify", folder / ".git" / "b.wav", "--model", tiny_model)  # named, it is an input
    assert hidden.exit_code == 0 and "neutral" in hidden.stdout


def test_each_error_is_one_line(tiny_model, tmp_path):
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(48_000, np.float32), 48_000)
    result = run("classify", tmp_path / "missing.wav", empty_dir, silent, "--model", tiny_model)
    assert result.exit_code == 1
    errors = result.stderr.strip().splitlines()
    assert errors == [
        f"error: {tmp_path / 'missing.wav'}: no such file",
        f"error: {empty_dir}: directory holds no audio files (.wav, .flac, .ogg, .opus, .mp3)",
        f"error: {silent}: audio is all zeros (digital silence)",
    ]


def test_usage_errors_exit_2(tiny_model, wav, tmp_path):
    assert run("classify").exit_code == 2
    assert run("classify", wav(), "--threads", "0", "--model", tiny_model).exit_code == 2
    missing_model = run("classify", wav(), "--model", tmp_path / "none.onnx")
    assert missing_model.exit_code == 2
    assert missing_model.stderr.strip() == f"error: {tmp_path / 'none.onnx'}: model file not found"


def test_max_duration_option(tiny_model, wav):
    result = run("classify", wav(300, 4.0), "--model", tiny_model, "--max-duration", "3")
    assert result.exit_code == 1 and "over the 3 s limit" in result.stderr


def test_min_duration_option(tiny_model, wav):
    blip = wav(300, 0.1, name="blip.wav")
    result = run("classify", blip, wav(300, 2.0), "--model", tiny_model)
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: {blip}: audio is 0.100 s long, under the 0.2 s minimum"
    assert len(result.stdout.splitlines()) == 2  # header + the 2 s clip: the bad file does not stop the other
    lenient = run("classify", blip, "--model", tiny_model, "--min-duration", "0", "--json")
    assert lenient.exit_code == 0 and json.loads(lenient.stdout)["label"] in LABELS


def test_stdin_wav(tiny_model):
    buffer = io.BytesIO()
    sf.write(buffer, tone(300, 2.0, 16_000), 16_000, format="WAV")
    result = run("classify", "-", "--model", tiny_model, "--json", input=buffer.getvalue())
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)
    assert row["label"] == "neutral" and row["path"] == "-"


def test_info(tiny_model):
    result = run("info", "--model", tiny_model, "--json")
    assert result.exit_code == 0
    meta = json.loads(result.stdout)
    assert meta["labels"][0] == "neutral" and meta["feature_config"]["n_mels"] == 128


def test_table_header_only_above_rows(tiny_model, tmp_path):
    """When every input fails there is no table: stdout stays empty, errors go to stderr."""
    (tmp_path / "notes.wav").write_text("not audio")
    failed = run("classify", str(tmp_path / "notes.wav"), str(tmp_path / "gone.wav"), "--model", tiny_model)
    assert failed.exit_code == 1 and failed.stdout == ""
    assert len(failed.stderr.strip().splitlines()) == 2
    sf.write(tmp_path / "tone.wav", tone(300, 1.0, 16_000), 16_000)
    mixed = run("classify", str(tmp_path / "notes.wav"), str(tmp_path / "tone.wav"), "--model", tiny_model)
    assert mixed.exit_code == 1 and mixed.stdout.splitlines()[0].split() == ["file", "emotion", "conf"]
    assert len(mixed.stdout.splitlines()) == 2


def test_info_for_people_summarises_the_metadata(tiny_model):
    result = run("info", "--model", tiny_model)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"model: {tiny_model}"
    assert "labels: " + ", ".join(LABELS) in lines
    assert "features: 48000 Hz, 3 s windows, 128 mel bands (n_fft 1024, hop 256)" in lines
    assert lines[-1] == "everything the file carries: ser-edge info --json"


def test_info_says_in_how_many_members_the_branch_was_folded(tmp_path):
    verdict = {"max_logit_deviation": 1e-6, "probe_windows": 512}
    provenance = {"members": [{"seed": 0}, {"seed": 1}],
                  "branch_fold": [{"folded": True, **verdict}, {"folded": False, **verdict, "max_logit_deviation": 0.4}]}
    model = band_model(tmp_path / "folded.onnx", metadata={"provenance": json.dumps(provenance)})
    result = run("info", "--model", str(model))
    assert result.exit_code == 0, result.output
    assert "members: 2 (seeds 0, 1)" in result.stdout.splitlines()
    assert ("transformer branch: folded into the classifier bias in 1 of 2 member(s) (its output was constant; "
            "ser_edge/export/fold.py)") in result.stdout.splitlines()


def test_console_script_runs_without_traceback(tiny_model, tmp_path):
    result = subprocess.run([sys.executable, "-m", "ser_edge.cli", "classify", str(tmp_path / "x.wav"), "--model", str(tiny_model)],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: {tmp_path / 'x.wav'}: no such file"


def test_stdin_raw_pcm(tiny_model):
    pcm = (tone(300, 2.0, 8_000) * 32767).astype("<i2").tobytes()
    result = run("classify", "-", "--model", tiny_model, "--json", "--raw-rate", "8000", input=pcm)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["label"] == "neutral"
    odd = run("classify", "-", "--model", tiny_model, "--raw-rate", "8000", input=pcm[:-1])
    assert odd.exit_code == 1 and "odd number of bytes" in odd.stderr


def test_stdin_garbage(tiny_model):
    result = run("classify", "-", "--model", tiny_model, input=b"\x00\x01garbage" * 10)
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: -: not a supported audio file (WAV, FLAC, Ogg Vorbis/Opus or MP3)"


@pytest.mark.parametrize("raw", [[], ["--raw-rate", "16000"]])
def test_stdin_empty(tiny_model, raw):
    result = run("classify", "-", "--model", tiny_model, *raw, input=b"")
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: -: nothing on stdin"


def test_training_commands_fail_in_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    cases = [
        (["train", str(tmp_path / "missing")], 1, "data folder does not exist"),
        (["train", str(tmp_path / "empty")], 1, "no RAVDESS speech clips"),
        (["train", str(tmp_path / "empty"), "--only-fold", "1"], 2, "--only-fold needs --folds"),  # usage before data
        (["evaluate"], 2, "give either RUN_DIR or --model"),
        (["evaluate", str(tmp_path / "empty")], 2, "not a run folder"),
        (["export", str(tmp_path / "empty"), "--out", str(tmp_path / "m.onnx"), "--data", str(tmp_path)], 2, "not a run folder"),
        (["export", str(tmp_path / "empty"), "--out", str(tmp_path / "m.onnx")], 2, "empty: not a run folder (no config.json)"),
        (["evaluate", str(tmp_path / "empty"), "--snr", "10"], 2, "--snr needs --model"),
    ]
    for args, code, message in cases:
        result = run(*args)
        assert result.exit_code == code, (args, result.output)
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)
        assert "Traceback" not in result.output


def manifest(folder, rows, header="path,label,speaker"):
    path = folder / "clips.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_evaluate_manifest_scores_your_own_clips(tiny_model, wav, tmp_path):
    for name, freq in (("a/low1.wav", 300), ("a/low2.wav", 300), ("b/high1.wav", 10_000), ("b/high2.wav", 10_000)):
        wav(freq, 2.0, name=name)
    csv_path = manifest(tmp_path, ["a/low1.wav,neutral,ann", "a/low2.wav,neutral,ann",
                                   f"{tmp_path / 'b/high1.wav'},disgust,bob", "b/high2.wav,neutral,bob"])
    out = tmp_path / "metrics.json"
    result = run("evaluate", "--manifest", csv_path, "--model", tiny_model, "--json", out)  # relative paths: from the CSV's folder
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{csv_path}: speakers ['ann', 'bob'] (4 clips)")
    summary = json.loads(out.read_text())
    assert summary["accuracy"] == 0.75 and summary["speakers"] == ["ann", "bob"] and summary["manifest"] == str(csv_path)
    assert summary["per_speaker"] == {"ann": {"clips": 2, "accuracy": 1.0}, "bob": {"clips": 2, "accuracy": 0.5}}
    assert result.stdout.rstrip().endswith("speaker  ann              1.000  (2 clips)\n         bob              0.500  (2 clips)")


def test_evaluate_manifest_errors(tiny_model, wav, tmp_path):
    wav(300, 2.0, name="low.wav")
    bad_label = run("evaluate", "--manifest", manifest(tmp_path, ["low.wav,neutral,a", "low.wav,joy,a"]), "--model", tiny_model)
    assert bad_label.exit_code == 1 and bad_label.stdout == ""
    assert bad_label.stderr.strip().startswith(f"error: {tmp_path / 'clips.csv'} line 3: label 'joy' is not one of the model's labels")
    no_header = run("evaluate", "--manifest", manifest(tmp_path, [], header="low.wav,neutral"), "--model", tiny_model)
    assert no_header.exit_code == 1 and "missing ['path', 'label']" in no_header.stderr
    missing_clip = run("evaluate", "--manifest", manifest(tmp_path, ["gone.wav,sad,a", "low.wav,neutral,a"]), "--model", tiny_model)
    assert missing_clip.exit_code == 1  # one bad clip: reported, the others still scored
    assert missing_clip.stderr.strip() == f"skipped: {tmp_path / 'gone.wav'}: no such file"
    assert "accuracy                         1.000         1" in missing_clip.stdout
    assert run("evaluate", tmp_path, "--manifest", tmp_path / "clips.csv").exit_code == 2
    assert run("evaluate", "--manifest", tmp_path / "clips.csv", "--actors", "1").exit_code == 2


def test_evaluate_manifest_of_ravdess_clips_says_when_the_model_heard_them(tmp_path, wav):

    split = {"train": [1, 2], "val": [3], "test": [4]}
    model = band_model(tmp_path / "m.onnx", metadata={"provenance": json.dumps({"split_actors": split})})
    for actor in (1, 4):
        wav(300, 2.0, name=f"Actor_{actor:02d}/03-01-01-01-01-01-{actor:02d}.wav")
    held_out = manifest(tmp_path, ["Actor_04/03-01-01-01-01-01-04.wav,neutral,a4"])
    result = run("evaluate", "--manifest", held_out, "--model", model)
    assert result.exit_code == 0 and "NOT HELD OUT" not in result.stdout
    seen = manifest(tmp_path, ["Actor_04/03-01-01-01-01-01-04.wav,neutral,a4", "Actor_01/03-01-01-01-01-01-01.wav,neutral,a1"])
    result = run("evaluate", "--manifest", seen, "--model", model)
    assert result.exit_code == 0
    assert result.stdout.splitlines()[1] == "NOT HELD OUT: the model was trained on actors [1]; not a speaker-independent score"


def test_version_is_written_once():
    """pyproject reads the version from ser_edge.__version__; --version reports the same."""
    from importlib.metadata import version

    import ser_edge

    assert version("ser-edge") == ser_edge.__version__
    assert run("--version").stdout.strip().endswith(f"version {ser_edge.__version__}")
    assert 'dynamic = ["version"]' in (Path(__file__).parents[1] / "pyproject.toml").read_text()
