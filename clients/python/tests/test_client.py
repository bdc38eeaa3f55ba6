"""From a notebook: submit, wait, results, pandas, and every way a request can go wrong."""
import socket

import pytest
import seed_sweeps
from seed_sweeps import _http

from conftest import TOKEN, job_argv


def test_submit_wait_results_and_pandas_on_a_finished_sweep(client, workers, tmp_path):
    toml = tmp_path / "sweep.toml"
    toml.write_text(
        'name = "notebook"\n[command]\nargv = ' + repr(job_argv()).replace("'", '"') + '\n'
        '[train]\nepochs = 2\n[grid]\nlr = [0.1, 0.3]\n'
    )
    sweep = client.submit(str(toml))
    workers.start("w", "--cpu-ranks", "2", "--exit-when-idle")
    assert sweep.wait(progress=True, timeout=120, poll=0.2) is sweep
    assert sweep.status == "finished"
    table = sweep.results("markdown")
    assert "lr" in table and "accuracy" in table
    rows = sweep.results("json")
    assert rows
    df = sweep.to_pandas()
    assert list(df["status"]) == ["completed", "completed"]
    assert sorted(df["lr"]) == [0.1, 0.3]
    assert df.loc[df["lr"] == 0.3, "accuracy"].item() == pytest.approx(0.5)
    best = sweep.best()
    assert best["job"] == int(df.loc[df["lr"] == 0.3, "job"].item()) and best["metric"] == "accuracy"
    assert [s["id"] for s in client.sweeps()] == [sweep.id]
    assert client.sweep(sweep.id).id == sweep.id


def test_a_toml_string_and_cancel(client):
    sweep = client.submit('name = "to-cancel"\n[run]\nexternal = true\n[grid]\nx = [1, 2, 3]\n')
    assert sweep.warnings and "external" in sweep.warnings[0]
    sweep.cancel()
    assert sweep.status == "cancelled"


def test_bad_input_raises_the_packages_own_errors(client, coordinator):
    with pytest.raises(seed_sweeps.SweepError, match="without a name"):
        client.submit({"grid": {"lr": [0.1]}})
    with pytest.raises(seed_sweeps.InvalidSpec) as e:
        client.submit({"name": "bad", "grid": {"lr": "nope"}})
    assert e.value.status == 422 and "grid" in e.value.message
    with pytest.raises(seed_sweeps.InvalidSpec) as e:
        client.submit("name = [unclosed")
    assert e.value.status == 400
    with pytest.raises(seed_sweeps.SweepError, match="no sweep file"):
        client.submit("does/not/exist.toml")
    with pytest.raises(seed_sweeps.NotFound):
        client.sweep(999_999)
    with pytest.raises(seed_sweeps.Unauthorized) as e:
        seed_sweeps.Client(coordinator.url, "wrong").submit({"name": "x"})
    assert "SWEEP_TOKEN" in str(e.value)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: refused
        with pytest.raises(seed_sweeps.ConnectionFailed, match="cannot reach the coordinator"):
            seed_sweeps.Client(f"http://127.0.0.1:{port}", TOKEN)


def test_a_coordinator_of_another_api_version_is_named(coordinator, monkeypatch):
    seed_sweeps.Client(coordinator.url, TOKEN)  # the same version: fine
    monkeypatch.setattr(_http, "API_VERSION", "2.0")
    with pytest.raises(seed_sweeps.VersionMismatch, match=r"this package speaks the coordinator's API 2\.0.*speaks 1\.1"):
        seed_sweeps.Client(coordinator.url, TOKEN)
    monkeypatch.setattr(_http, "API_VERSION", "1.9")
    with pytest.raises(seed_sweeps.VersionMismatch, match="The coordinator is older"):
        seed_sweeps.Client(coordinator.url, TOKEN)
    monkeypatch.setattr(_http, "API_VERSION", "1.0")
    seed_sweeps.Client(coordinator.url, TOKEN)  # an older minor is served
    with pytest.raises(seed_sweeps.VersionMismatch, match="states no API version"):
        _http.check_version(None, coordinator.url)
