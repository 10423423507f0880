"""The Prometheus endpoint serves each archiver's counters and gauges, scraped by an HTTP client over loopback."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import numpy as np
import pytest

from conftest import RigFactory
from helpers import wait_for_items
from heros_archiver.errors import ConfigurationError
from heros_archiver.observe.metrics import COUNTERS, GAUGES, serve_metrics
from heros_archiver.testing import free_port, unique_realm
from procs import (
    CLI,
    camera,
    camera_archiver_arguments,
    child,
    child_env,
    send_frames,
    wait_for_archiver,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.timeout(120)
parser = pytest.importorskip("prometheus_client.parser")


def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """``/metrics`` of 127.0.0.1:``port``: per sample name, the value of each label set."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in parser.text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def labels(**values: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(values.items()))


def test_the_collector_serves_every_counter_per_source_and_every_gauge(make_rig: RigFactory) -> None:
    rig = make_rig(sequence_key="frame")
    for index in (0, 1, 3):
        rig.camera.acquisition_data(np.full((2, 3), index, dtype=np.uint8), {"frame": index})
    wait_for_items(rig.archiver, 3)  # then the bad payload, after them
    rig.archiver.feed("cam", ("not an array", {"frame": 4}))
    wait_for_items(rig.archiver, 4)
    wait_until(lambda: rig.archiver.status()["listeners"]["status"]["handled"] == 4, what="the status listener")
    port = free_port()
    server = serve_metrics([rig.archiver.status], port)
    try:
        assert server.address == ("127.0.0.1", port)
        samples = scrape(port)
    finally:
        server.close()
    cam = labels(archiver="ArrayArchiver", event="acquisition_data", source="cam")
    for name, _, _ in COUNTERS:
        assert cam in samples[f"heros_archiver_{name}_total"], name
    assert samples["heros_archiver_items_received_total"][cam] == 4
    assert samples["heros_archiver_items_archived_total"][cam] == 3
    assert samples["heros_archiver_items_dead_lettered_total"][cam] == 1
    assert samples["heros_archiver_gaps_total"][cam] == 1 and samples["heros_archiver_missing_total"][cam] == 1
    assert samples["heros_archiver_bytes_archived_total"][cam] == rig.archiver.stats()["total"]["bytes"]
    assert samples["heros_archiver_items_in_flight"][cam] == 0  # every item settled
    assert samples["heros_archiver_source_intake_waiting"][cam] == 0
    archiver = labels(archiver="ArrayArchiver", event="acquisition_data")
    for name, _, _ in GAUGES:
        if name != "paused":  # only an archiver that can be paused has it
            assert archiver in samples[f"heros_archiver_{name}"], name
    assert samples["heros_archiver_queue_items"][archiver] == 0
    assert samples["heros_archiver_intake_waiting"][archiver] == 0  # frames: the direct intake
    assert samples["heros_archiver_intake_waiting_bytes"][archiver] == 0
    assert samples["heros_archiver_disk_free_bytes"][archiver] > 0
    status = labels(archiver="ArrayArchiver", event="acquisition_data", listener="status")
    assert samples["heros_archiver_listener_queued"][status] == 0
    assert samples["heros_archiver_listener_lagged_total"][status] == 0


def test_a_port_in_use_is_refused_clearly(make_rig: RigFactory) -> None:
    rig = make_rig()
    port = free_port()
    server = serve_metrics([rig.archiver.status], port)
    try:
        with pytest.raises(ConfigurationError, match=f"127.0.0.1:{port}"):
            serve_metrics([rig.archiver.status], port)
    finally:
        server.close()


@pytest.mark.slow
def test_run_with_metrics_port_serves_the_counters_of_its_archivers(tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.json", camera_archiver_arguments(tmp_path / "archive"))
    port, metrics_port, realm = free_port(), free_port(), unique_realm()
    args = [*CLI, "run", str(config), "--realm", realm, "--metrics-port", str(metrics_port)]
    with camera(port, realm) as cam, child(args, tmp_path / "run.log", child_env(port)) as proc:
        wait_for_archiver(cam, proc)
        assert f"metrics on http://127.0.0.1:{metrics_port}/metrics" in proc.output()
        send_frames(cam, list(range(5)), (4, 4))
        received = "heros_archiver_items_archived_total"

        def archived() -> float:
            return sum(scrape(metrics_port).get(received, {}).values())

        wait_until(lambda: archived() == 5, what=f"5 archived in the metrics:\n{proc.output()}")
        send_frames(cam, list(range(5, 8)), (4, 4))
        wait_until(lambda: archived() == 8, what="the counter to move on to 8")
        samples = scrape(metrics_port)
        (label_set,) = samples[received]
        assert dict(label_set)["source"] == "cam" and dict(label_set)["event"] == "acquisition_data"
        code, output = proc.terminate()
        assert code == 0, output
