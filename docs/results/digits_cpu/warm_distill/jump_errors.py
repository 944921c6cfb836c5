"""Per-jump errors of digits LFM block-1 students against the teacher's fine ODE map.

LFM_WORKDIR=W python docs/results/digits_cpu/warm_distill/jump_errors.py name=dir[:lw] ...   (dir holding block_1.msgpack; "init" = warm start untrained)
"""
import os, sys, json
import flax, jax, jax.numpy as jnp
sys.path.insert(0, os.getcwd())  # run from the repository root
import importlib.util
from lfm_jax import distill, lfm, flow_map as fm
from lfm_jax.runs import common, lfm_distill

spec = importlib.util.spec_from_file_location("cfg", "configs/lfm_digits.py")
cfgmod = importlib.util.module_from_spec(spec); spec.loader.exec_module(cfgmod)
config = cfgmod.get_config()
with config.unlocked():
    config.model.unet_channels = 8; config.lfm.steps_per_block = 300; config.train.batch_size = 64
W = os.environ.get("LFM_WORKDIR", "runs/lfm_unet")  # the digits U-Net LFM (run_lfm.sh)
ds = common.load_data(config)
network, model, params_list = lfm_distill.load_trained_blocks(config, W, ds.example_shape)
n = 200
x_l = jnp.asarray(ds.train[:n]); y = jnp.asarray(ds.train_labels[:n], jnp.int32)
x_r = lfm.ou_step(jax.random.PRNGKey(5), x_l, model.step_sizes[0])
b = distill.time_reversed(distill.guided_teacher(network, params_list[0], 1.0))
grid = [0.0, 0.25, 0.5, 0.75, 1.0]

def teacher_path(z, yi):
    X = distill.ode_flow_map(lambda t, x: b(t, x, yi), 32)
    out = [z]
    for a, c in zip(grid[:-1], grid[1:]):
        out.append(X(a, c, out[-1]))
    return jnp.stack(out)

path = jax.jit(jax.vmap(teacher_path))(x_r, y)  # (n, 5, ...)
jumps = [(0, 1), (1, 2), (2, 3), (3, 4), (0, 2), (2, 4), (0, 4)]

def report(name, fmap, params):
    def one(xa, yi, a, c):
        return fmap.apply(params, a, c, xa, yi)
    res = {}
    for i, j in jumps:
        pred = jax.jit(jax.vmap(lambda xa, yi: one(xa, yi, grid[i], grid[j])))(path[:, i], y)
        res[f"{grid[i]}-{grid[j]}"] = float(jnp.mean(jnp.sum((pred - path[:, j]) ** 2, axis=(1, 2, 3))))
    for K in (1, 2, 4):
        times = fm.uniform_grid(K)
        xs = jax.jit(jax.vmap(lambda z, yi: fm.sample(lambda s, t, x: fmap.apply(params, s, t, x, yi), z, times, batched=False)))(x_r, y)
        res[f"K={K}"] = float(jnp.mean(jnp.sum((xs - path[:, 4]) ** 2, axis=(1, 2, 3))))
    print(name, json.dumps({k: round(v, 3) for k, v in res.items()}), flush=True)

for arg in sys.argv[1:]:
    name, d = arg.split("=")
    lw = d.endswith(":lw"); d = d.replace(":lw", "")
    fmap = lfm_distill.student_flow_map(config, ds.example_shape, conditional=True, learned_weighting=lw)
    if d == "init":
        params = lfm_distill.teacher_init(config, fmap, params_list[0], conditional=True, key=jax.random.PRNGKey(0))
    else:
        template = jax.eval_shape(fmap.init, jax.random.PRNGKey(0))
        params = flax.serialization.from_bytes(template, open(f"{d}/block_1.msgpack", "rb").read())
    report(name, fmap, params)
