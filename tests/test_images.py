"""Image readers, scaling, splits, the sharded batch loader, bits per dimension."""
import gzip
import math
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lfm_jax import distributed, images

KEY = jax.random.PRNGKey(0)


def _write_idx(path, array, compress):
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    raw = header + np.ascontiguousarray(array, np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def _tiny_mnist(tmp_path, compress=True, n=6):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labs = rng.integers(0, 10, (n,), dtype=np.uint8)
    sfx = ".gz" if compress else ""
    _write_idx(tmp_path / f"t10k-images-idx3-ubyte{sfx}", imgs, compress)
    _write_idx(tmp_path / f"t10k-labels-idx1-ubyte{sfx}", labs, compress)
    return imgs, labs


@pytest.mark.parametrize("compress", [True, False])
def test_mnist_idx_round_trip(tmp_path, compress):
    imgs, labs = _tiny_mnist(tmp_path, compress)
    x, y = images.load_mnist(tmp_path, "test")
    assert x.shape == (6, 28, 28, 1) and x.dtype == np.uint8 and y.dtype == np.int32
    np.testing.assert_array_equal(x[..., 0], imgs)
    np.testing.assert_array_equal(y, labs)


def test_idx_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        images.load_mnist(tmp_path, "test")
    _tiny_mnist(tmp_path)
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        images.load_mnist(tmp_path, "train")
    bad = tmp_path / "bad.idx"
    bad.write_bytes(b"\x12\x34\x08\x01\x00\x00\x00\x02ab")
    with pytest.raises(ValueError, match=r"bad\.idx: not an IDX file"):
        images.read_idx(bad)
    short = tmp_path / "short.idx"
    short.write_bytes(bytes([0, 0, 8, 1]) + np.asarray([5], ">u4").tobytes() + b"abc")
    with pytest.raises(ValueError, match=r"short\.idx: IDX header says shape \(5,\)"):
        images.read_idx(short)
    # labels that do not match the images
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(3, np.uint8), True)
    with pytest.raises(ValueError, match="3 labels for 6 images"):
        images.load_mnist(tmp_path, "test")


def _write_cifar(directory, names, n=2, seed=0):
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in names:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        with open(directory / name, "wb") as f:
            pickle.dump({b"batch_label": b"x", b"labels": labels, b"data": data}, f, protocol=2)
        out[name] = (data, labels)
    return out


def test_cifar10_reader_layout_and_splits(tmp_path):
    train_names = [f"data_batch_{i}" for i in range(1, 6)]
    written = _write_cifar(tmp_path / "cifar-10-batches-py", train_names + ["test_batch"])
    x, y = images.load_cifar10(tmp_path, "train")  # finds the subfolder
    assert x.shape == (10, 32, 32, 3) and x.dtype == np.uint8 and y.shape == (10,)
    data, labels = written["data_batch_2"]
    # row-major (channel, row, column) in the file -> (row, column, channel)
    n, i, j, c = 1, 5, 7, 2
    assert x[2 + n, i, j, c] == data[n, c * 1024 + i * 32 + j]
    np.testing.assert_array_equal(y[2:4], labels)
    xt, _ = images.load_cifar10(tmp_path / "cifar-10-batches-py", "test")
    assert xt.shape == (2, 32, 32, 3)


def test_cifar10_errors(tmp_path):
    _write_cifar(tmp_path, ["data_batch_1", "data_batch_2"])
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        images.load_cifar10(tmp_path, "train")
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 10), np.uint8),
                                                        b"labels": [0, 1]}))
    with pytest.raises(ValueError, match=r"test_batch: 'data' must be uint8 \(n, 3072\)"):
        images.load_cifar10(tmp_path, "test")
    (tmp_path / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="test_batch: not a CIFAR-10 python batch"):
        images.load_cifar10(tmp_path, "test")
    # a pickle that would run code is refused, not executed
    (tmp_path / "test_batch").write_bytes(pickle.dumps(print))
    with pytest.raises(ValueError, match="refusing to load builtins.print"):
        images.load_cifar10(tmp_path, "test")


def test_digits_scaling():
    x, y = images.load_digits()
    assert x.shape == (1797, 8, 8, 1) and x.dtype == np.uint8 and y.shape == (1797,)
    from sklearn.datasets import load_digits
    raw = load_digits().images
    np.testing.assert_array_equal(x[raw[..., None] == 16], 255)
    np.testing.assert_array_equal(x[raw[..., None] == 0], 0)
    assert len(np.unique(x)) == len(np.unique(raw))


def test_dequantize_centre_quantize_and_flip():
    k = jnp.arange(256, dtype=jnp.uint8).reshape(4, 8, 8, 1)
    x = images.dequantize(KEY, k)
    assert x.dtype == jnp.float32 and float(x.min()) >= -1.0 and float(x.max()) < 1.0
    lo = 2.0 * k.astype(jnp.float32) / 256 - 1
    assert bool(jnp.all((x >= lo) & (x < lo + 2.0 / 256)))
    np.testing.assert_array_equal(images.quantize(x), k)
    np.testing.assert_array_equal(images.quantize(images.to_centered(k)), k)
    f = images.random_flip(KEY, x)
    flipped = [bool(jnp.all(f[i] == x[i, :, ::-1])) for i in range(4)]
    same = [bool(jnp.all(f[i] == x[i])) for i in range(4)]
    assert all(a or b for a, b in zip(flipped, same))
    big = jnp.tile(x[:1], (64, 1, 1, 1))
    n_flipped = int(jnp.sum(jnp.any(images.random_flip(KEY, big) != big, axis=(1, 2, 3))))
    assert 10 < n_flipped < 54


def test_split_images():
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (100, 4, 4, 1), dtype=np.uint8)
    imgs[:, 0, 0, 0] = np.arange(100)  # a row id in every image
    labels = np.arange(100) % 10
    ds = images.split_images(imgs, labels, n_val=20, n_test=10, seed=3, name="toy")
    assert (len(ds.train), len(ds.val), len(ds.test)) == (70, 20, 10)
    ids = np.concatenate([ds.train, ds.val, ds.test])[:, 0, 0, 0]
    assert sorted(ids) == list(range(100))
    np.testing.assert_array_equal(ds.val_labels, ds.val[:, 0, 0, 0] % 10)
    assert ds.example_shape == (4, 4, 1) and ds.dim == 16 and ds.num_classes == 10
    with pytest.raises(ValueError, match="toy: cannot split 100 images"):
        images.split_images(imgs, labels, n_val=60, n_test=40, name="toy")


def test_sharded_batch_over_four_devices_matches_host_gather():
    mesh = distributed.make_mesh()
    assert mesh.shape["data"] == 4  # conftest: 4 simulated CPU devices, 1 process
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (50, 4, 4, 1), dtype=np.uint8)
    labels = np.arange(50, dtype=np.int32)
    key = jax.random.fold_in(KEY, 7)
    k, y = images.load_batch(key, imgs, labels, 8, mesh)
    idx = images.batch_indices(key, 50, 8)
    np.testing.assert_array_equal(np.asarray(k), imgs[idx])
    np.testing.assert_array_equal(np.asarray(y), idx)
    assert k.sharding.spec == jax.sharding.PartitionSpec("data")
    assert len(k.addressable_shards) == 4 and k.addressable_shards[0].data.shape[0] == 2
    assert images.process_rows(8, mesh) == slice(0, 8)
    # device-side preprocessing does not depend on the sharding
    prep = jax.jit(lambda kk, b: images.preprocess(kk, b, flip=True))
    np.testing.assert_array_equal(prep(key, k), prep(key, jnp.asarray(imgs[idx])))
    with pytest.raises(ValueError, match="not divisible by the 4 devices"):
        images.load_batch(key, imgs, labels, 6, mesh)


def test_bits_per_dim_closed_forms(x64):
    """bpd of a density on the dequantised cube equals the discrete 8-bit code length.

    For p constant on each bin, p(x) = P(k) / (2/256)^D, the formula gives exactly
    -log2 P(k) / D per example; the uniform density on [-1, 1]^D (2^-D) gives 8 bits.
    """
    dim = 3
    assert float(images.bits_per_dim(dim * math.log(2.0), dim)) == pytest.approx(8.0)
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(256), size=dim)  # independent levels per dimension
    k = np.stack([rng.choice(256, size=500, p=probs[d]) for d in range(dim)], axis=1)
    x = images.dequantize(KEY, jnp.asarray(k, jnp.float64), jnp.float64)
    k_back = np.asarray(images.quantize(x)).astype(int)
    np.testing.assert_array_equal(k_back, k)
    log_p = np.sum(np.log(probs[np.arange(dim), k_back]) - math.log(2.0 / 256.0), axis=1)
    bpd = np.asarray(images.bits_per_dim(-log_p, dim))
    code_length = -np.sum(np.log2(probs[np.arange(dim), k]), axis=1) / dim
    np.testing.assert_allclose(bpd, code_length, rtol=1e-12)
