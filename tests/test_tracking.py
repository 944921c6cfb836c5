"""lfm_jax.tracking: TensorBoard event files read back record by record."""

import glob
import io
import struct

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.image  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from tensorboardX.proto import event_pb2  # noqa: E402
from tensorboardX.record_writer import masked_crc32c  # noqa: E402

from lfm_jax import tracking  # noqa: E402


def read_events(logdir):
    """Every Event in the TFRecord event files of logdir, CRCs checked, file order."""
    events = []
    for path in sorted(glob.glob(f"{logdir}/events.out.tfevents.*")):
        data = open(path, "rb").read()
        pos = 0
        while pos < len(data):
            header = data[pos:pos + 8]
            (length,) = struct.unpack("<Q", header)
            (len_crc,) = struct.unpack("<I", data[pos + 8:pos + 12])
            assert len_crc == masked_crc32c(header)
            body = data[pos + 12:pos + 12 + length]
            (body_crc,) = struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])
            assert body_crc == masked_crc32c(body)
            events.append(event_pb2.Event.FromString(body))
            pos += 16 + length
    return events


def values(events):
    """[(tag, step, summary value)] of the summary events."""
    return [(v.tag, e.step, v) for e in events if e.HasField("summary") for v in e.summary.value]


def test_scalars_images_and_figures_round_trip(tmp_path):
    image = np.zeros((6, 5, 3), np.uint8)
    image[1, 2] = (255, 10, 20)
    with tracking.make(str(tmp_path)) as tracker:
        assert tracker.enabled
        for step in range(3):
            tracker.write_scalars(step, {"loss": 1.5 / (step + 1),
                                         "block_1/grad_norm": jnp.float32(step),
                                         "lr": np.float64(1e-3)})
        tracker.write_images(7, {"samples": image})
        fig, ax = plt.subplots(figsize=(1, 1), dpi=20)
        ax.plot([0, 1], [0, 1])
        tracker.write_figures(7, {"fig": fig})
        png = tmp_path / "x.png"
        matplotlib.image.imsave(png, np.full((4, 3, 3), 0.5))
        tracker.write_image_files(8, {"file": str(png)})
    assert not plt.fignum_exists(fig.number)  # closed after writing

    got = values(read_events(tmp_path))
    loss = [(s, v.simple_value) for t, s, v in got if t == "loss"]
    assert loss == [(s, pytest.approx(1.5 / (s + 1))) for s in range(3)]
    assert [v.simple_value for t, _, v in got if t == "block_1/grad_norm"] == [0.0, 1.0, 2.0]
    assert [v.simple_value for t, _, v in got if t == "lr"] == [pytest.approx(1e-3)] * 3
    (step, img), = [(s, v.image) for t, s, v in got if t == "samples"]
    assert step == 7 and (img.height, img.width, img.colorspace) == (6, 5, 3)
    decoded = matplotlib.image.imread(io.BytesIO(img.encoded_image_string), format="png")
    np.testing.assert_array_equal(np.round(decoded[..., :3] * 255).astype(np.uint8), image)
    assert [(s, v.image.height) for t, s, v in got if t == "fig"] == [(7, 20)]
    (file_img,) = [v.image for t, s, v in got if t == "file"]
    assert (file_img.height, file_img.width) == (4, 3)


def test_resume_purges_later_steps_and_bad_values_raise(tmp_path):
    tracker = tracking.make(str(tmp_path), purge_step=5)
    with pytest.raises(ValueError, match="'curve'"):
        tracker.write_scalars(5, {"curve": np.ones(3)})
    with pytest.raises(ValueError, match="'img'"):
        tracker.write_images(5, {"img": np.full((4, 4), 2.0)})
    with pytest.raises(FileNotFoundError, match="'f'"):
        tracker.write_image_files(5, {"f": str(tmp_path / "missing.png")})
    tracker.write_scalars(5, {"loss": 2.0})
    tracker.close()
    events = read_events(tmp_path)
    starts = [e.step for e in events
              if e.HasField("session_log") and e.session_log.status == e.session_log.START]
    assert starts == [5]
    assert [(t, s) for t, s, _ in values(events)] == [("loss", 5)]


def test_disabled_or_not_process_zero_writes_nothing(tmp_path, monkeypatch):
    off = tracking.make(str(tmp_path / "off"), enabled=False)
    assert isinstance(off, tracking.NoOpTracker) and not off.enabled
    fig = plt.figure()
    off.write_scalars(0, {"loss": 1.0})
    off.write_figures(0, {"f": fig})
    off.close()
    assert not plt.fignum_exists(fig.number)
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    other = tracking.make(str(tmp_path / "p1"))
    assert isinstance(other, tracking.NoOpTracker)
    other.write_scalars(0, {"loss": 1.0})
    assert not (tmp_path / "off").exists() and not (tmp_path / "p1").exists()


def _tags(events):
    return {v.tag for e in events for v in e.summary.value}


def test_jobs_write_tensorboard_events_for_training_blocks_and_final_metrics(tmp_path):
    from configs import lfm_checkerboard
    from lfm_jax import runs

    config = lfm_checkerboard.get_config()
    config.lfm.num_blocks = 2
    config.lfm.steps_per_block = 20
    config.lfm.n_val = 64
    config.lfm.push_ode.rtol = config.lfm.push_ode.atol = 1e-3
    config.model.hidden = (16, 16)
    config.data.n_train = 512
    config.train.batch_size = 64
    config.train.steps_per_call = 10
    config.train.checkpoint_every = 20
    config.eval.n_samples = 64
    config.eval.nll_examples = 64
    config.eval.ode.rtol = config.eval.ode.atol = 1e-3
    workdir = tmp_path / "w"
    results = runs.get("lfm")(config, str(workdir))
    block1 = read_events(workdir / "blocks" / "1")
    assert {"train/loss", "train/grad_norm", "train/lr"} <= _tags(block1)
    steps = sorted({e.step for e in block1 if e.summary.value})
    assert steps == [10, 20]
    final = read_events(workdir / "final")
    tags = _tags(final)
    assert "final/test_nll" in tags and "blocks/val_nll" in tags and "samples" in tags
    nll = [v.simple_value for e in final for v in e.summary.value if v.tag == "final/test_nll"]
    assert nll == [pytest.approx(results["test_nll"], rel=1e-6)]
    assert "phases" in results and results["phases"]["train"]["seconds"] > 0

    from lfm_jax.runs import common

    config.log.tensorboard = False  # the jobs' tracker is then a no-op
    assert isinstance(common.tracker(config, str(tmp_path / "off")), tracking.NoOpTracker)
    assert not (tmp_path / "off").exists()
