"""Problem log lines carry source, event, path and error as fields; ``--log-format json`` writes them as JSON lines."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import RigFactory
from helpers import wait_for_items
from heros_archiver.observe.logs import JsonFormatter, configure_logging, log_fields
from heros_archiver.testing import free_port, unique_realm
from procs import CLI, camera, camera_archiver_arguments, child, child_env, wait_for_archiver, wait_until, write_config

pytestmark = pytest.mark.timeout(90)


def _record(message: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("heros_archiver", logging.ERROR, __file__, 1, message, (), None)
    record.__dict__.update(extra)
    return record


def test_the_json_formatter_writes_one_object_with_the_fields_it_knows() -> None:
    fields = log_fields("cam", "acquisition_data", Path("/data/a.npy"), OSError(28, "No space left on device"))
    line = JsonFormatter().format(_record("it failed", **fields))
    assert "\n" not in line
    document = json.loads(line)
    assert document["level"] == "ERROR" and document["logger"] == "heros_archiver"
    assert document["message"] == "it failed" and document["time"].endswith("+00:00")
    assert document["source"] == "cam" and document["event"] == "acquisition_data"
    assert document["path"] == "/data/a.npy" and document["error"] == "OSError: [Errno 28] No space left on device"
    plain = json.loads(JsonFormatter().format(_record("nothing known")))
    assert not {"source", "event", "path", "error"} & set(plain)


def test_the_json_formatter_keeps_a_traceback_and_text_orjson_refuses() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    document = json.loads(JsonFormatter().format(record))
    assert "ValueError: boom" in document["exception"]
    odd = json.loads(JsonFormatter().format(_record("from the network", source="cam\ud800")))
    assert odd["source"] == "cam\ud800"


def test_json_format_replaces_the_text_handler_and_text_keeps_it() -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    text = logging.StreamHandler()
    try:
        configure_logging("INFO", "json", text)
        assert len(root.handlers) == 1 and isinstance(root.handlers[0].formatter, JsonFormatter)
        configure_logging("WARNING", "text", text)
        assert root.handlers == [text] and root.level == logging.WARNING
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def test_a_dead_lettered_item_and_a_gap_are_logged_with_their_fields(
    make_rig: RigFactory, caplog: pytest.LogCaptureFixture
) -> None:
    rig = make_rig(sequence_key="frame")
    with caplog.at_level(logging.WARNING, logger="heros_archiver"):
        rig.camera.acquisition_data(np.zeros((2, 2), dtype=np.uint8), {"frame": 0})
        wait_for_items(rig.archiver, 1)
        rig.archiver.feed("cam", ("not an array", {"frame": 2}))
        wait_for_items(rig.archiver, 2)
    dead = [r for r in caplog.records if "dead-letter store" in r.getMessage()]
    gap = [r for r in caplog.records if "never arrived" in r.getMessage()]
    assert len(dead) == 1 and len(gap) == 1, [r.getMessage() for r in caplog.records]
    document = json.loads(JsonFormatter().format(dead[0]))
    entry = Path(document["path"])
    assert entry.parent == rig.root / ".heros-archiver" / "dead-letter" and entry.is_dir()
    assert document["source"] == "cam" and document["event"] == "acquisition_data"
    assert document["error"].startswith("PayloadError: expected a numpy array")
    assert document["message"] == dead[0].getMessage()  # the text is the text format's, unchanged
    gap_document = json.loads(JsonFormatter().format(gap[0]))
    assert gap_document["source"] == "cam" and gap_document["error"] == "frame 1 never arrived"


@pytest.mark.slow
def test_run_with_log_format_json_writes_a_dead_letter_as_one_json_line(tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.json", camera_archiver_arguments(tmp_path / "archive"))
    port, realm = free_port(), unique_realm()
    args = [*CLI, "run", str(config), "--realm", realm, "--log-format", "json"]
    with camera(port, realm) as cam, child(args, tmp_path / "run.log", child_env(port)) as proc:
        wait_for_archiver(cam, proc)
        cam.acquisition_data("not a frame", {"frame": 0})

        def logged() -> list[dict[str, object]]:
            lines = [line for line in proc.output().splitlines() if line.startswith("{")]
            return [json.loads(line) for line in lines if "dead-letter store" in line]

        wait_until(logged, what=f"the dead letter's log line:\n{proc.output()}")
        (line,) = logged()
        assert line["level"] == "ERROR" and line["source"] == "cam" and line["event"] == "acquisition_data"
        assert str(line["path"]).startswith(str(tmp_path / "archive" / ".heros-archiver" / "dead-letter"))
        code, output = proc.terminate()
        assert code == 0, output
        for text in output.splitlines():
            if text.startswith("{"):
                json.loads(text)  # every log line is JSON
