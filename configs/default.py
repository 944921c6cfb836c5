"""Shared default config. Experiment configs import it, change a few fields, and
return it locked, so an unknown key (in a file or on the command line) is an error.

Sections: data, model, fm (plain flow matching), train, eval, lfm (Local Flow
Matching, see configs/lfm_defaults.py), flow_map (see configs/flow_map_defaults.py).
ODE options sections (eval.ode, lfm.push_ode) are configs/ode_defaults.py.
"""

import ml_collections

from configs import flow_map_defaults, lfm_defaults, ode_defaults


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.method = "fm"  # fm | lfm | flow_map | classifier (registry: lfm_jax.runs.METHODS)
    config.seed = 0

    config.data = ml_collections.ConfigDict()
    # a 2-D toy name, "gmm", "file", a tabular name, or images: digits | mnist | cifar10
    config.data.name = "checkerboard"
    config.data.n_train = 50_000
    config.data.n_val = 5_000
    config.data.n_test = 5_000
    config.data.dim = 2  # gmm only
    config.data.n_components = 8  # gmm only
    config.data.path = ""  # data.name="file": a .npy/.npz/.csv table; tabular: data root
    # Draw a fresh training batch from the data's known sampler every step (toys, gmm;
    # LFM: block 1 only): lfm_jax.runs.data_feed.
    config.data.fresh_samples = False
    # Images (lfm_jax.runs.image_data): the file set read from data.path, "train" or
    # "test" (mnist: {train,t10k}-*-ubyte; cifar10: data_batch_* or test_batch), split
    # into train / n_val / n_test; random left-right flips of FM training batches.
    config.data.source_split = "train"
    config.data.random_flip = False
    # Where the FM / LFM training batches come from: "device" (the training set is
    # replicated on every device and each step draws its batch there: fastest while
    # it fits) or "host" (the set stays in host memory; every process feeds only its
    # rows of each batch, train.HostBatches: for data larger than a device).
    config.data.placement = "device"

    config.model = ml_collections.ConfigDict()
    config.model.kind = "mlp"  # mlp | unet (lfm_jax.runs.models)
    config.model.unet_preset = "digits8"  # digits8 | mnist | cifar10 (lfm_jax.unet.PRESETS)
    config.model.unet_channels = 0  # base width; 0: the preset's
    config.model.unet_time_scale = 1000.0  # the U-Net embeds time_scale * t
    config.model.unet_dropout = -1.0  # dropout rate in training; -1: the preset's
    # 0: unconditional; k > 0: class labels 0..k-1 plus a null class (classifier-free
    # guidance; labels dropped with probability fm.p_uncond in training)
    config.model.num_classes = 0
    config.model.compute_dtype = "float32"  # float32 | bfloat16 (params stay float32)
    config.model.hidden = (256, 256, 256)
    config.model.activation = "silu"
    config.model.num_frequencies = 8
    config.model.max_frequency = 64.0
    # "fourier": [Fourier features of t, x]; "raw": [t, x] (the official LFM networks)
    config.model.time_embedding = "fourier"
    config.model.softplus_beta = 1.0  # activation "softplus": log(1 + exp(beta h)) / beta
    config.model.weight_init = "lecun"  # lecun | torch (torch.nn.Linear's uniform init)

    config.fm = ml_collections.ConfigDict()
    config.fm.interpolant = "linear"  # linear | trig
    config.fm.time_sampler = "uniform"  # uniform | beta
    config.fm.beta_a = 1.0
    config.fm.beta_b = 1.0
    config.fm.coupling = "independent"  # independent | ot | ot_exact | ot_sinkhorn
    # class-conditional models (model.num_classes > 0): label dropout probability
    # (FM and every LFM block)
    config.fm.p_uncond = 0.1

    config.train = ml_collections.ConfigDict()
    config.train.steps = 5_000
    config.train.batch_size = 256
    config.train.steps_per_call = 50
    config.train.lr = 1e-3
    config.train.schedule = "cosine"  # constant | cosine | linear | step
    # schedule "step": lr * decay_rate ** floor(step / decay_every) (torch StepLR)
    config.train.decay_rate = 1.0
    config.train.decay_every = 1_000
    config.train.warmup_steps = 100
    config.train.grad_clip = 1.0
    config.train.weight_decay = 0.0
    config.train.ema_decay = 0.999
    config.train.checkpoint_every = 1_000
    config.train.keep_checkpoints = 3
    config.train.num_devices = 0  # 0: all devices
    # Keep the params of the lowest validation loss (fixed batch and key) of each LFM
    # block / of FM, scored after every fused call: lfm_jax.runs.data_feed.
    config.train.keep_best = False

    config.eval = ml_collections.ConfigDict()
    config.eval.use_ema = True
    config.eval.n_samples = 5_000
    config.eval.nll_examples = 2_000
    # Split scored by the NLL: "test" (default) or "val" (the MAF validation split, the
    # split the LFM paper reports on tabular data; see the paper_nll variant of
    # configs/lfm_official.py).
    config.eval.split = "test"
    # ODE of the test NLL and sampling (lfm_jax.ode.options_from_config).
    config.eval.ode = ode_defaults.get_config()
    config.eval.divergence = "exact"  # exact | hutchinson
    config.eval.chunk_size = 1_000
    # Images: classifier-free guidance weight w of the samples of a class-conditional
    # model (v_w = v(x, null) + w (v(x, y) - v(x, null)); FM and every LFM block) and
    # the images per class (conditional) or in all (unconditional) of samples_grid.png.
    config.eval.guidance_w = 1.0
    config.eval.grid_per_class = 10
    # Images, scored by the repository's own classifier (NOT Inception FID;
    # lfm_jax.runs.classifier_eval): the workdir of a finished "classifier" job trained
    # with the same data settings and seed (configs/classifier_digits.py; "" = off).
    # For each guidance weight in guidance_ws (a class-conditional model; one unguided
    # set otherwise) fd_samples class-balanced images are generated, saved as
    # samples_w<w>.npz, and scored against the held-out test images: fd_classifier_w<w>,
    # accuracy_w<w> and best_w in metrics.json.
    config.eval.classifier_workdir = ""
    config.eval.fd_samples = 1_000
    config.eval.guidance_ws = (1.0,)
    # Images, standard FID (lfm_jax.inception_fid: pytorch-fid, `pip install -e .[fid]`):
    # the path of pytorch-fid's Inception weights pt_inception-2015-12-05-6726825d.pth
    # on this machine (never downloaded; "" = off). The same fd_samples images per
    # guidance weight (with or without classifier_workdir) get fid_inception_w<w>
    # against the held-out test images. FID of a few thousand samples or fewer is
    # biased upward: not comparable with published 50k-sample FID values.
    config.eval.inception_weights = ""

    config.log = ml_collections.ConfigDict()
    # TensorBoard event files in the workdir (lfm_jax.tracking; tensorboardX, no
    # TensorFlow): loss, grad norm, lr while training, per-block and final metrics and
    # the figures at the end. View with `tensorboard --logdir <workdir or sweep dir>`.
    config.log.tensorboard = True

    config.lfm = lfm_defaults.get_config()
    config.flow_map = flow_map_defaults.get_config()
    return config


def locked(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Lock a config: setting a key that does not exist raises."""
    config.lock()
    return config
